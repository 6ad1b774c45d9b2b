"""Feed-forward kinds: SwiGLU (CART's) and a GELU MLP; one model-wide FFN in every layer."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from cartspec.components.base import ConfigEntry, Strict

# kind -> (weight matrices, generated class, template)
_KINDS = {"swiglu": (3, "SwiGLU", "swiglu.py.j2"), "gelu": (2, "MLP", "gelu.py.j2")}


class FFN(Strict):
    """The feed-forward network of every layer."""

    kind: Literal["swiglu", "gelu"] = Field(
        "swiglu", description="swiglu: down(silu(gate(x)) * up(x)); gelu: proj(gelu(fc(x)))."
    )
    hidden: int | None = Field(
        None,
        ge=1,
        le=1 << 18,
        description="Hidden width. Default: swiglu ceil(int(8d/3)/multiple_of)*multiple_of (CART), gelu 4d.",
    )
    multiple_of: int = Field(256, ge=1, le=4096, description="Rounding of the default swiglu hidden width.")
    fused: bool = Field(
        False,
        description="swiglu only: one gate_up Linear (d -> 2 hidden, gate half first) instead of gate_proj and up_proj (Huginn's fc).",
    )

    @field_validator("fused")
    @classmethod
    def _fuses_a_gate(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("kind") == "gelu":
            raise ValueError("only swiglu has a gate and an up projection to fuse")
        return v

    def hidden_for(self, d_model: int) -> int:
        """The hidden width this FFN resolves to at width ``d_model``."""
        if self.hidden is not None:
            return self.hidden
        if self.kind == "gelu":
            return 4 * d_model
        return math.ceil(int(8 * d_model / 3) / self.multiple_of) * self.multiple_of

    def params(self, d_model: int) -> int:
        return _KINDS[self.kind][0] * d_model * self.hidden_for(d_model)

    def flops(self, d_model: int, seq_len: int) -> int:
        return 2 * self.params(d_model) * seq_len

    @property
    def class_name(self) -> str:
        return ("Fused" if self.fused else "") + _KINDS[self.kind][1]

    @property
    def template(self) -> str:
        return "fused_swiglu.py.j2" if self.fused else _KINDS[self.kind][2]

    def config_entry(self, d_model: int) -> ConfigEntry:
        """``ffn_hidden``: the spec's width, or the default rule as a property of d_model."""
        if self.hidden is not None:
            return ConfigEntry(
                name="ffn_hidden", type="int", value=str(self.hidden), comment=f"explicit {self.kind} hidden"
            )
        if self.kind == "gelu":
            return ConfigEntry(
                name="ffn_hidden", type="int", rule="4 * self.d_model", comment="gelu: 4 * d_model"
            )
        m = self.multiple_of
        return ConfigEntry(
            name="ffn_hidden",
            type="int",
            rule=f"math.ceil(int(8 * self.d_model / 3) / {m}) * {m}",
            comment=f"swiglu: ceil(int(8 * d_model / 3) / {m}) * {m}",
        )
