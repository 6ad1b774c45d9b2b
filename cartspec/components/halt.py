"""Halting: how the loop's states become the coda's input when the loop may stop early per position.

``act`` (OpenMythos, after Graves' Adaptive Computation Time): after each loop a Linear(d -> 1) with
a bias gives p = sigmoid(halt(h)) per position; the position's states are summed with weight p until
the running total of p reaches ``threshold``, where the remainder 1 - total is the last weight. The
coda reads that weighted sum. The weights of a position that has halted are zero, so the loop may
stop once every position has halted without changing the output: the generated model does so only
at inference without an explicit loop count; training and FLOP counts run every loop.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cartspec.components.base import ConfigEntry, register
from cartspec.components.loop import LoopPart


@register("halt")
class ACTHalt(LoopPart):
    """Adaptive computation time: the coda reads the loop's states weighted by a learned halting probability."""

    attribute: ClassVar[str] = "halt"
    weights: ClassVar[str] = "proj"
    on_output: ClassVar[bool] = True
    template: ClassVar[str] = "act_halt.py.j2"
    loop_control: ClassVar[bool] = False  # runs every loop
    output_order: ClassVar[int] = 2

    kind: Literal["act"]
    threshold: float = Field(
        0.99, gt=0, le=1, description="Cumulative halting probability at which a position stops."
    )

    def params(self, d_model: int) -> int:
        return d_model + 1  # proj: weight and bias

    def constructor(self) -> str:
        return "ACTHalting(config.d_model, config.halt_threshold)"

    def config_entries(self) -> list[ConfigEntry]:
        return [
            ConfigEntry(
                name="halt_threshold",
                type="float",
                value=repr(self.threshold),
                comment="ACT: stop at this mass",
            )
        ]
