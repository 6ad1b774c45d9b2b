"""Where the loop's state starts (``blocks.core.init_state``).

CART starts its loop from the prelude output e. Huginn and Parcae start from noise, drawn fresh
at every forward, so that the model learns to forget its start; OpenMythos starts from e.
A seed makes the noisy start deterministic at evaluation: one table over the window, drawn once
from the seed, row t the start of position t, so cached decoding meets the same start as a full
forward.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from cartspec.components.base import ConfigEntry, Strict, register


class InitState(Strict):
    """What every initial-state kind declares."""

    template: ClassVar[str] = ""  # a module the generated model builds, if any
    attribute: ClassVar[str] = ""

    def expression(self) -> str:
        """The generated forward's h0, from ``e`` (and ``start``, the first position's index)."""
        raise NotImplementedError

    def doc(self) -> str:
        raise NotImplementedError

    def constructor(self) -> str:
        return ""

    def config_entries(self) -> list[ConfigEntry]:
        return []


@register("init_state")
class FromPrelude(InitState):
    """h0 = e, the prelude's output (CART, OpenMythos)."""

    kind: Literal["prelude"]

    def expression(self) -> str:
        return "e"

    def doc(self) -> str:
        return "the loop starts from e"


@register("init_state")
class Zeros(InitState):
    """h0 = 0."""

    kind: Literal["zeros"]

    def expression(self) -> str:
        return "torch.zeros_like(e)"

    def doc(self) -> str:
        return "the loop starts from zeros"


@register("init_state")
class TruncNormal(InitState):
    """h0 ~ TruncNormal(0, std, -3 std .. 3 std) * scale, fresh every forward (Huginn, Parcae)."""

    template: ClassVar[str] = "init_state.py.j2"
    attribute: ClassVar[str] = "initial_state"

    kind: Literal["trunc_normal"]
    std: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Std of the draw; default sqrt(2 / (5 d_model)) (the peers' init std).",
    )
    scale: float | Literal["sqrt_d"] = Field(
        1.0, description="Factor on the draw: a number, or sqrt_d (Huginn scales it as its embedding)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="At evaluation, start every sequence from one table drawn from this seed "
        "(deterministic); null: a fresh draw at evaluation too, as the peers do.",
    )

    def expression(self) -> str:
        return "self.initial_state(e, start)"

    def doc(self) -> str:
        return "the loop starts from a truncated-normal draw"

    def constructor(self) -> str:
        return "InitialState(config)"

    def config_entries(self) -> list[ConfigEntry]:
        std = (
            ConfigEntry(
                name="init_state_std",
                type="float",
                rule="math.sqrt(2 / (5 * self.d_model))",
                comment="sqrt(2 / (5 d_model))",
            )
            if self.std is None
            else ConfigEntry(name="init_state_std", type="float", value=repr(self.std))
        )
        scale = (
            ConfigEntry(
                name="init_state_scale", type="float", rule="math.sqrt(self.d_model)", comment="sqrt(d_model)"
            )
            if self.scale == "sqrt_d"
            else ConfigEntry(name="init_state_scale", type="float", value=repr(float(self.scale)))
        )
        seed = ConfigEntry(
            name="init_state_seed",
            type="int | None",
            value=repr(self.seed),
            comment="evaluation draws from this seed; None: fresh draws",
        )
        return [std, scale, seed]

    def scale_value(self, d_model: int) -> float:
        return math.sqrt(d_model) if self.scale == "sqrt_d" else float(self.scale)
