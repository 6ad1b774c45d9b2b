"""Value embeddings: a token-indexed table per chosen layer whose rows are added to that layer's V,
through a learned per-K/V-head gate (Parcae's, after nanochat).

A stage lists its layers with a table explicitly (Parcae derives them from a parity rule over a
layer count that differs between the tables and the gates; the spec states the outcome). A table
is a lookup: it counts with the embeddings and costs no FLOPs; the gate is a small matmul inside
its layer. A core's tables are looked up once per forward and read by every loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from cartspec.codegen.layout import LINE_LENGTH
from cartspec.components.base import ConfigEntry, Problems, Strict, register

if TYPE_CHECKING:
    from cartspec.schema import ModelConfig


@register("value_embedding")
class GatedValueEmbedding(Strict):
    """v += 2 sigmoid(gate(x[..., :gate_channels])) * table[ids], one gate value per K/V head, x the
    layer's normalised input; one table and gate per listed layer."""

    template: ClassVar[str] = "values.py.j2"

    kind: Literal["gated"]
    layers: list[int] = Field(
        ...,
        min_length=1,
        max_length=1024,
        description="Indices of the stage's layers (0 first) that have a table and a gate.",
    )
    gate_channels: int = Field(
        32, ge=1, le=1 << 16, description="Leading channels of the layer's normalised input the gate reads."
    )

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"layer indices must be distinct and at least 0, got {v}")
        return v

    def table_params(self, m: ModelConfig, kv_heads: int) -> int:
        """All the stage's tables: one row of K/V width per token, per listed layer."""
        return len(self.layers) * m.vocab_size * kv_heads * m.head_dim

    def gate_params(self, kv_heads: int) -> int:
        """One layer's gate: Linear(gate_channels -> kv_heads)."""
        return self.gate_channels * kv_heads

    def problems(self, m: ModelConfig, layers: int, attention_kind: str) -> Problems:
        """Rules that need the stage: its layer count, its attention and the model width."""
        out: Problems = []
        if attention_kind != "mha":
            out.append(
                (("kind",), f"value embeddings add to the V of an mha attention, not {attention_kind}")
            )
        beyond = [i for i in self.layers if i >= layers]
        if beyond:
            out.append((("layers",), f"{beyond} beyond the stage's {layers} layers (0..{layers - 1})"))
        if self.gate_channels > m.d_model:
            out.append((("gate_channels",), f"{self.gate_channels} exceeds d_model {m.d_model}"))
        return out

    def config_entries(self, block: str) -> list[ConfigEntry]:
        name, kind = f"{block}_value_layers", "tuple[int, ...]"
        layers = [str(i) for i in sorted(self.layers)]
        value = f"({', '.join(layers)}{',' if len(layers) == 1 else ''})"
        if len(f"    {name}: {kind} = {value}") > LINE_LENGTH:  # one per line, as ruff lays it out
            value = "(\n" + "".join(f"        {i},\n" for i in layers) + "    )"
        return [
            ConfigEntry(name=name, type=kind, value=value),
            ConfigEntry(
                name=f"{block}_value_gate_channels",
                type="int",
                value=str(self.gate_channels),
                comment=f"the value-embedding gate reads x[..., :{self.gate_channels}]",
            ),
        ]
