"""The loop's parts: how a loop's output meets its input (gate), the blend of past states
(state mix) and the loop-index signal (loop embedding).

Each kind says how the generated model builds it, what one loop step computes with it, and
which statistics ``loop_stats()`` reports. The CART paper counts these parts once in its
effective parameters, however many loops run (``loop_control``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from cartspec.components.base import ConfigEntry, Strict, register


class LoopPart(Strict):
    """What every loop part declares."""

    attribute: ClassVar[str] = ""  # the generated model's attribute; "" when it has no module
    weights: ClassVar[str] = ""  # its parameter's name, for the report's breakdown
    on_output: ClassVar[bool] = False  # runs on the core's output (a gate), else on the loop's input
    loop_control: ClassVar[bool] = True  # the CART paper counts it once, however many loops run
    template: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()  # loop variables its step reads besides the core's output
    output_order: ClassVar[int] = 1  # among the parts on the core's output: LoRA 0, gate 1, halting 2

    @property
    def rows(self) -> int | None:
        """The loops a table of it can index (None: any number)."""
        return None

    def templates(self) -> list[str]:
        """The templates of the classes its generated module needs."""
        return [self.template] if self.template else []

    def params(self, d_model: int) -> int:
        return 0

    def flops(self, d_model: int, seq_len: int) -> int:
        return 2 * self.params(d_model) * seq_len

    def constructor(self) -> str:
        """The module's construction in the generated ``__init__``."""
        return ""

    def config_entries(self) -> list[ConfigEntry]:
        return []

    def stats(self) -> list[tuple[str, str, str]]:
        """``loop_stats()`` entries: (key, expression, what it means)."""
        return []

    @property
    def takes_update(self) -> bool:
        """A gate that adds the input itself: the core returns only its update delta."""
        return False


@register("gate")
class LTIGate(LoopPart):
    """CART's "LTI gate": a learned per-channel decay sigmoid(a) on the loop input."""

    attribute: ClassVar[str] = "gate"
    weights: ClassVar[str] = "a"
    on_output: ClassVar[bool] = True
    template: ClassVar[str] = "lti_gate.py.j2"

    kind: Literal["lti"]
    init: float = Field(0.9, gt=0, lt=1, description="Initial sigmoid(a); a starts at logit(init).")
    form: Literal["cart", "contractive"] = Field(
        "cart",
        description="cart: sigmoid(a)*h_in + block(h_in) (block keeps its residual, as the author's code); contractive: sigmoid(a)*h_in + delta.",
    )

    def params(self, d_model: int) -> int:
        return d_model  # a

    @property
    def takes_update(self) -> bool:
        return self.form == "contractive"

    def constructor(self) -> str:
        return "LTIGate(config.d_model, config.gate_init)"

    def config_entries(self) -> list[ConfigEntry]:
        return [
            ConfigEntry(name="gate_init", type="float", value=repr(self.init), comment="sigmoid(a) at init")
        ]

    def step(self, out: str) -> str:
        return f"self.gate(h_in, {out})"

    def step_doc(self) -> str:
        if self.takes_update:
            return "h = sigmoid(a) * h_in + delta, the core's update"
        return "h = sigmoid(a) * h_in + core(h_in)"

    def stats(self) -> list[tuple[str, str, str]]:
        return [
            (
                "rho",
                "torch.sigmoid(self.gate.a).max().item()",
                'rho = max sigmoid(a), the paper\'s "spectral radius"',
            )
        ]


@register("gate")
class ResidualGate(LoopPart):
    """h = h_in + block(h_in): the author's disable_lti ablation (block keeps its residual)."""

    on_output: ClassVar[bool] = True

    kind: Literal["residual"]

    def step(self, out: str) -> str:
        return f"h_in + {out}"

    def step_doc(self) -> str:
        return "h = h_in + core(h_in), the core keeping its own residual"


@register("state_mix")
class HyperMix(LoopPart):
    """CART's hyper-connection: a softmax-weighted blend of the last `taps` loop states."""

    attribute: ClassVar[str] = "state_mix"
    weights: ClassVar[str] = "weights"
    template: ClassVar[str] = "hyper_mix.py.j2"

    kind: Literal["hyper"]
    taps: int = Field(3, ge=1, le=16, description="How many past states are blended.")
    init: list[float] | None = Field(
        None, description="Initial raw weights (before softmax); default [1, 0, ...]."
    )

    @field_validator("init")
    @classmethod
    def _init_matches_taps(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        taps = info.data.get("taps")  # absent when taps itself is invalid
        if v is not None and taps is not None and len(v) != taps:
            raise ValueError(f"{len(v)} weights but taps is {taps}")
        return v

    @field_validator("init")
    @classmethod
    def _init_finite(cls, v: list[float] | None) -> list[float] | None:
        # the weights become float literals in the generated code: nan or inf would not even import
        if v is not None and not all(math.isfinite(w) and abs(w) <= 1e4 for w in v):
            raise ValueError(f"weights must be finite numbers in [-1e4, 1e4], got {v}")
        return v

    @property
    def init_weights(self) -> list[float]:
        return list(self.init) if self.init is not None else [1.0] + [0.0] * (self.taps - 1)

    def params(self, d_model: int) -> int:
        return self.taps  # one raw weight per tap

    def constructor(self) -> str:
        return "StateMix(config.state_mix_taps, config.state_mix_init)"

    def config_entries(self) -> list[ConfigEntry]:
        init = ", ".join(repr(float(w)) for w in self.init_weights)
        return [
            ConfigEntry(name="state_mix_taps", type="int", value=str(self.taps)),
            ConfigEntry(
                name="state_mix_init",
                type="tuple[float, ...]",
                value=f"({init}{',' if self.taps == 1 else ''})",
                comment="raw weights; softmax in forward",
            ),
        ]

    def stats(self) -> list[tuple[str, str, str]]:
        return [
            ("mix", "torch.softmax(self.state_mix.weights, dim=0).tolist()", "the blend's softmax weights")
        ]


@register("loop_embedding")
class LoopEmbedding(LoopPart):
    """A fixed sinusoid table indexed by the loop number, projected to d_model by a learned Linear."""

    attribute: ClassVar[str] = "loop_embedding"
    weights: ClassVar[str] = "proj"
    template: ClassVar[str] = "loop_embedding.py.j2"

    kind: Literal["sinusoidal"]
    dim: int = Field(32, ge=2, le=4096, description="Width of the sinusoid table (even).")
    max_loops: int = Field(
        16, ge=1, le=4096, description="Rows of the table: the most loops inference may run."
    )

    @field_validator("dim")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (sin and cos pairs)")
        return v

    @property
    def rows(self) -> int:
        return self.max_loops

    def params(self, d_model: int) -> int:
        return self.dim * d_model  # proj; the table is a buffer

    def constructor(self) -> str:
        return "LoopEmbedding(config.loop_embedding_dim, config.max_loops, config.d_model)"

    def config_entries(self) -> list[ConfigEntry]:
        return [
            ConfigEntry(name="loop_embedding_dim", type="int", value=str(self.dim)),
            ConfigEntry(
                name="max_loops",
                type="int",
                value=str(self.max_loops),
                comment="rows of the loop-embedding table",
            ),
        ]


@register("gate")
class DecayGate(LoopPart):
    """OpenMythos's update h = A*h_prev + B*e + block(h_in), A = exp(-exp(log_dt + log_A)) in (0, 1) per channel."""

    attribute: ClassVar[str] = "gate"
    weights: ClassVar[str] = "log_A, log_dt, B"
    on_output: ClassVar[bool] = True
    loop_control: ClassVar[bool] = False  # runs every loop: OpenMythos counts it in its recurrent block
    template: ClassVar[str] = "decay_gate.py.j2"
    reads: ClassVar[tuple[str, ...]] = ("h_prev", "e")

    kind: Literal["decay"]
    b_init: float = Field(0.1, ge=-1e4, le=1e4, description="Initial B, the weight of e in every channel.")

    def params(self, d_model: int) -> int:
        return 2 * d_model + 1  # log_A, B; log_dt is one scalar

    def constructor(self) -> str:
        return "DecayGate(config.d_model, config.gate_b_init)"

    def config_entries(self) -> list[ConfigEntry]:
        return [ConfigEntry(name="gate_b_init", type="float", value=repr(self.b_init), comment="B at init")]

    def step(self, out: str) -> str:
        return f"self.gate(h_prev, e, {out})"

    def step_doc(self) -> str:
        return "h = A * h_prev + B * e + core(h_in)"

    def stats(self) -> list[tuple[str, str, str]]:
        return [("rho", "self.gate.decay().max().item()", "rho = max A, the largest per-channel decay")]


@register("loop_embedding")
class ChannelSignal(LoopPart):
    """OpenMythos's loop signal: sin and cos of the loop index in the first channels; no weights, any loop count."""

    attribute: ClassVar[str] = "loop_embedding"
    template: ClassVar[str] = "channel_signal.py.j2"

    kind: Literal["channels"]
    fraction: int = Field(
        8, ge=1, le=4096, description="The signal fills the first d_model // fraction channels."
    )
    base: float = Field(10000.0, gt=1, le=1e9, description="Base of the sinusoid's frequencies.")

    def constructor(self) -> str:
        return "ChannelSignal(config.d_model, config.signal_fraction, config.signal_base)"

    def config_entries(self) -> list[ConfigEntry]:
        return [
            ConfigEntry(
                name="signal_fraction",
                type="int",
                value=str(self.fraction),
                comment="signal channels: d / this",
            ),
            ConfigEntry(name="signal_base", type="float", value=repr(self.base)),
        ]
