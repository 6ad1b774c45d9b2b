"""Feed-forward kinds: SwiGLU (CART's), a GELU MLP and a squared-ReLU MLP (Parcae's); one model-wide
FFN in every layer."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from cartspec.components.base import ConfigEntry, Strict

# kind -> (weight matrices, generated class, template)
_KINDS = {
    "swiglu": (3, "SwiGLU", "swiglu.py.j2"),
    "gelu": (2, "MLP", "gelu.py.j2"),
    "relu2": (2, "ReLU2MLP", "relu2.py.j2"),
}
_FOUR_D = ("gelu", "relu2")  # kinds whose default hidden width is 4d


class FFN(Strict):
    """The feed-forward network of every layer."""

    kind: Literal["swiglu", "gelu", "relu2"] = Field(
        "swiglu",
        description="swiglu: down(silu(gate(x)) * up(x)); gelu: proj(gelu(fc(x))); "
        "relu2: proj(relu(fc(x))^2 * scale) (Parcae).",
    )
    hidden: int | None = Field(
        None,
        ge=1,
        le=1 << 18,
        description="Hidden width. Default: swiglu ceil(int(8d/3)/multiple_of)*multiple_of (CART), gelu and relu2 4d.",
    )
    multiple_of: int = Field(256, ge=1, le=4096, description="Rounding of the default swiglu hidden width.")
    fused: bool = Field(
        False,
        description="swiglu only: one gate_up Linear (d -> 2 hidden, gate half first) instead of gate_proj and up_proj (Huginn's fc).",
    )
    scale: float = Field(
        1.0,
        gt=0,
        le=1e4,
        description="relu2 only: the factor on relu(fc(x))^2 (Parcae's is 0.5); other kinds take 1.",
    )

    @field_validator("fused")
    @classmethod
    def _fuses_a_gate(cls, v: bool, info: ValidationInfo) -> bool:
        kind = info.data.get("kind")  # absent when the kind itself was refused
        if v and kind is not None and kind != "swiglu":
            raise ValueError("only swiglu has a gate and an up projection to fuse")
        return v

    def hidden_for(self, d_model: int) -> int:
        """The hidden width this FFN resolves to at width ``d_model``."""
        if self.hidden is not None:
            return self.hidden
        if self.kind in _FOUR_D:
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
        if self.kind in _FOUR_D:
            return ConfigEntry(
                name="ffn_hidden", type="int", rule="4 * self.d_model", comment=f"{self.kind}: 4 * d_model"
            )
        m = self.multiple_of
        return ConfigEntry(
            name="ffn_hidden",
            type="int",
            rule=f"math.ceil(int(8 * self.d_model / 3) / {m}) * {m}",
            comment=f"swiglu: ceil(int(8 * d_model / 3) / {m}) * {m}",
        )

    def config_entries(self, d_model: int) -> list[ConfigEntry]:
        """The FFN's sizes in the generated Config: its width, and relu2's scale."""
        scale = [
            ConfigEntry(
                name="ffn_scale", type="float", value=repr(self.scale), comment="relu(fc(x))^2 * scale"
            )
        ]
        return [self.config_entry(d_model), *(scale if self.kind == "relu2" else [])]

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Only relu2 has a scale: a scale on another kind would be silently ignored."""
        if self.kind != "relu2" and self.scale != 1.0:
            return [(("scale",), f"only relu2 takes a scale; {self.kind} computes without one")]
        return []
