"""Readout kinds: what maps the last loop state to the coda's input (Parcae's C).

A readout runs once per forward, after the last loop; with none the coda reads the state itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from cartspec.components.base import Strict, register


@register("readout")
class LinearReadout(Strict):
    """C: a bias-free Linear(d -> d) on the last loop state, before the coda (Parcae)."""

    attribute: ClassVar[str] = "readout"
    weights: ClassVar[str] = "weight"

    kind: Literal["linear"]

    def params(self, d_model: int) -> int:
        return d_model * d_model

    def flops(self, d_model: int, seq_len: int) -> int:
        return 2 * self.params(d_model) * seq_len

    def constructor(self) -> str:
        return "Linear(config.d_model, config.d_model)"
