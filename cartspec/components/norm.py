"""Normalisation kinds: RMSNorm (weight only, in float32) and LayerNorm (weight and bias)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cartspec.components.base import Strict

Placement = Literal["pre", "sandwich"]
NORMS_PER_LAYER = {"pre": 2, "sandwich": 4}

# kind -> (parameters per channel, constructor in the generated code, template or "" for torch's)
_KINDS = {
    "rmsnorm": (1, "RMSNorm(config.d_model, config.norm_eps)", "rmsnorm.py.j2"),
    "layernorm": (2, "nn.LayerNorm(config.d_model, eps=config.norm_eps)", ""),
}


class NormKind(Strict):
    """A normalisation: its kind and eps (a norm placed by the module that holds it)."""

    kind: Literal["rmsnorm", "layernorm"] = Field(
        "rmsnorm",
        description="rmsnorm (weight only, computed in float32) or layernorm (weight and bias).",
    )
    eps: float = Field(1e-6, gt=0, lt=1, description="Added to the variance for stability.")

    def params(self, d_model: int) -> int:
        return _KINDS[self.kind][0] * d_model

    def flops(self, d_model: int, seq_len: int) -> int:
        return 2 * self.params(d_model) * seq_len

    @property
    def constructor(self) -> str:
        return _KINDS[self.kind][1]

    def constructor_for(self, width: str) -> str:
        """The constructor of this norm over ``width`` channels (a name in the generated code)."""
        return self.constructor.replace("config.d_model", width)

    @property
    def template(self) -> str:
        return _KINDS[self.kind][2]


class Norm(NormKind):
    """The normalisation used before every mixer and FFN, and before the head."""

    placement: Placement = Field(
        "pre",
        description="Where a layer's norms sit: pre: x + f(norm(x)) (2 norms per layer); sandwich: "
        "norm(x + f(norm(x))) (4 per layer, the residual stream itself renormalised: Huginn). A stage may override it.",
    )
