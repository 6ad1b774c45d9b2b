"""The anchor kinds: K and V computed from one block's output, read by the core's cross-attention.

mla_kv (CART): one latent of width kv_latent, up-projected to every head's K and V
(kv_down, k_up, v_up). kv: full-rank k_proj and v_proj with kv_heads heads (repeated to the
query heads once, not in every loop). No RoPE on either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import ConfigDict, Field

from cartspec.components.attention import kv_heads_or_all, kv_heads_problems, latent_entry, latent_width
from cartspec.components.base import ConfigEntry, Identifier, Problems, Strict

if TYPE_CHECKING:
    from cartspec.schema import ModelConfig


class Anchor(Strict):
    """K and V computed from one block's output, read by cross-attention in the core."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Identifier = Field(
        "prelude", alias="from", description="Whose output feeds the anchor: prelude or embedding."
    )
    kind: Literal["mla_kv", "kv"] = Field(
        "mla_kv", description="mla_kv: kv_down, k_up, v_up (CART); kv: full-rank k_proj, v_proj."
    )
    kv_latent: int | None = Field(
        None, ge=1, le=1 << 16, description="Latent width for mla_kv; default d_model / 4."
    )
    kv_heads: int | None = Field(
        None, ge=1, le=4096, description="K/V heads for kind kv; default = query heads."
    )
    recompute: Literal["never", "every_loop"] = Field(
        "never",
        description="never: K, V once per forward; every_loop: from each loop's input (the unfrozen-KV ablation).",
    )

    template: ClassVar[str] = "anchor.py.j2"

    def resolved(self, m: ModelConfig) -> Anchor:
        """Sizes concrete: the latent width for mla_kv, the K/V head count for kv."""
        if self.kind == "mla_kv":
            return self.model_copy(update={"kv_latent": latent_width(m, self.kv_latent)})
        return self.model_copy(update={"kv_heads": kv_heads_or_all(m, self.kv_heads)})

    def params(self, m: ModelConfig) -> int:
        r = self.resolved(m)
        if r.kind == "mla_kv":
            return 3 * m.d_model * r.kv_latent
        return 2 * m.d_model * r.kv_heads * m.head_dim

    def flops(self, m: ModelConfig, seq_len: int) -> int:
        return 2 * self.params(m) * seq_len

    def grouped(self, m: ModelConfig) -> bool:
        return self.kind == "kv" and self.resolved(m).kv_heads < m.n_heads

    def problems(self, m: ModelConfig) -> Problems:
        """Each kind's own size key: a latent for mla_kv, K/V heads for kv."""
        if self.kind == "kv":
            found = kv_heads_problems(self.kv_heads, m)
            if self.kv_latent is not None:
                found.append((("kv_latent",), "only kind mla_kv has a latent; kind kv is full rank"))
            return found
        if self.kv_heads is not None:
            return [(("kv_heads",), "kind mla_kv up-projects to every head; kv_heads is for kind kv")]
        return []

    def config_entries(self, m: ModelConfig) -> list[ConfigEntry]:
        if self.kind == "mla_kv":
            return [latent_entry("anchor_kv_latent", self.kv_latent)]
        if self.kv_heads is None:
            return [
                ConfigEntry(
                    name="anchor_kv_heads", type="int", rule="self.n_heads", comment="K/V heads = query heads"
                )
            ]
        return [ConfigEntry(name="anchor_kv_heads", type="int", value=str(self.kv_heads))]
