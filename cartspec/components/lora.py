"""A per-loop low-rank correction of the core's output (OpenMythos's depth-wise LoRA).

``per_loop``: y + (down(y) * scale[min(r, rows - 1)]) @ B, with ``down`` (d -> rank) and ``B``
(rank x d) shared by every loop and one learned row of ``scale`` per loop; loops past the table
reuse its last row, so inference may run more loops than the table has rows.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cartspec.components.base import ConfigEntry, register
from cartspec.components.loop import LoopPart


@register("lora")
class PerLoopLoRA(LoopPart):
    """A rank-r correction of the core's output, scaled per loop by one row of a learned table."""

    attribute: ClassVar[str] = "lora"
    weights: ClassVar[str] = "down, B, scale"
    on_output: ClassVar[bool] = True
    template: ClassVar[str] = "loop_lora.py.j2"
    loop_control: ClassVar[bool] = False  # its matmuls run every loop
    reads: ClassVar[tuple[str, ...]] = ("r",)
    output_order: ClassVar[int] = 0

    kind: Literal["per_loop"]
    rank: int = Field(..., ge=1, le=4096, description="Width of the low-rank bottleneck.")
    max_loops: int = Field(
        ..., ge=1, le=4096, description="Rows of the scale table; later loops reuse the last row."
    )

    def params(self, d_model: int) -> int:
        return 2 * d_model * self.rank + self.max_loops * self.rank  # down, B; the scale table

    def flops(self, d_model: int, seq_len: int) -> int:
        return 2 * 2 * d_model * self.rank * seq_len  # down and B; a table row costs nothing

    @property
    def rows(self) -> int | None:
        return None  # later loops reuse the last row

    def constructor(self) -> str:
        return "LoopLoRA(config.d_model, config.lora_rank, config.lora_rows, config.init_std)"

    def adapt(self, out: str) -> str:
        """The core's output with this loop's correction added."""
        return f"self.lora({out}, r)"

    def config_entries(self) -> list[ConfigEntry]:
        return [
            ConfigEntry(name="lora_rank", type="int", value=str(self.rank)),
            ConfigEntry(
                name="lora_rows", type="int", value=str(self.max_loops), comment="per-loop scale rows"
            ),
        ]
