"""What each loop reads besides its state (``blocks.core.inject``).

CART's loop sees the prelude output only through its anchor's K, V. The other looped LMs
re-inject e into every loop's input, each in its own way; an inject kind says how, as the
expression the generated loop computes from the state h (after the state mix and the loop
signal) and e. Its weights, if any, run once per loop, so they count R times in the effective
parameters and FLOPs (unlike the CART paper's loop control).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cartspec.components.base import ConfigEntry, register
from cartspec.components.loop import LoopPart
from cartspec.components.norm import NormKind


class Inject(LoopPart):
    """What every inject kind declares besides a loop part's."""

    loop_control: ClassVar[bool] = False

    def read(self, h: str, e: str) -> str:
        """The loop body's input, as an expression over the state ``h`` and ``e``."""
        raise NotImplementedError

    def doc(self) -> str:
        raise NotImplementedError


@register("inject")
class Add(Inject):
    """h_in = h + e: the prelude output added to every loop's input."""

    kind: Literal["add"]

    def read(self, h: str, e: str) -> str:
        return f"{h} + {e}"

    def doc(self) -> str:
        return "h + e"


@register("inject")
class AddNorm(Inject):
    """h_in = norm(h + e), a norm of its own: OpenMythos's RMSNorm(h + loop signal + e)."""

    attribute: ClassVar[str] = "inject"
    weights: ClassVar[str] = "weight"

    kind: Literal["add_norm"]
    norm: NormKind = Field(default_factory=NormKind, description="The norm applied to h + e.")

    def templates(self) -> list[str]:
        return [self.norm.template] if self.norm.template else []  # the norm's class (torch has LayerNorm)

    def params(self, d_model: int) -> int:
        return self.norm.params(d_model)

    def constructor(self) -> str:
        return self.norm.constructor.replace("config.norm_eps", "config.inject_eps")

    def config_entries(self) -> list[ConfigEntry]:
        return [
            ConfigEntry(name="inject_eps", type="float", value=repr(self.norm.eps), comment="its norm's eps")
        ]

    def read(self, h: str, e: str) -> str:
        return f"self.inject({h} + {e})"

    def doc(self) -> str:
        return "norm(h + e)"


@register("inject")
class Concat(Inject):
    """h_in = adapter([h, e]): a learned Linear(2d -> d) on the state and e side by side, state first (Huginn's adapter)."""

    attribute: ClassVar[str] = "inject"
    weights: ClassVar[str] = "adapter"
    template: ClassVar[str] = "concat_inject.py.j2"

    kind: Literal["concat"]

    def params(self, d_model: int) -> int:
        return 2 * d_model * d_model

    def constructor(self) -> str:
        return "ConcatInject(config.d_model)"

    def read(self, h: str, e: str) -> str:
        return f"self.inject({h}, {e})"

    def doc(self) -> str:
        return "adapter([h, e])"


@register("inject")
class Diagonal(Inject):
    """h_in = exp(-softplus(dt_bias) * exp(A_log)) * h + softplus(dt_bias) * (e B^T): Parcae's
    per-channel decay of the state with a learned step, and a full input matrix B on e."""

    attribute: ClassVar[str] = "inject"
    weights: ClassVar[str] = "A_log, dt_bias, B"
    template: ClassVar[str] = "diagonal_inject.py.j2"

    kind: Literal["diagonal"]

    def params(self, d_model: int) -> int:
        return d_model * d_model + 2 * d_model  # B; A_log and dt_bias, one per channel

    def constructor(self) -> str:
        return "DiagonalInject(config.d_model)"

    def read(self, h: str, e: str) -> str:
        return f"self.inject({h}, {e})"

    def doc(self) -> str:
        return "decay(h) + step * e B^T"
