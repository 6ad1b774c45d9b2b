"""DeepSeek-style multi-head latent attention (DeepSeek-V2; OpenMythos's ``attn_type: mla``).

Not CART's ``mla`` (full-rank Q, K and V up-projected from one latent, RoPE on the whole head):
here Q goes through its own low-rank latent too, each latent is normalised, and every head's key
is [k_nope, k_rope] where k_nope comes from the K/V latent and k_rope is one RoPE'd key shared by
all heads, projected straight from x. RoPE touches only the rope part of Q and K.

    c_q  = norm(q_down x)                     q = [q_up_nope c_q, RoPE(q_up_rope c_q)]   per head
    [c_kv, k_r] = kv_down x                   k = [k_nope, RoPE(k_r)]                  per head
    [k_nope, v] = kv_up norm(c_kv)            y = o_proj(softmax(q k^T / sqrt(nope + rope)) v)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from cartspec.components.attention import ROPE_STYLE_DOC, Attention, RopeStyle
from cartspec.components.base import ConfigEntry, register

if TYPE_CHECKING:
    from cartspec.schema import ModelConfig


@register("attention")
class DeepSeekMLA(Attention):
    """DeepSeek-style latent attention: low-rank Q and K/V with norms, one shared RoPE key, RoPE on rope dims only."""

    template: ClassVar[str] = "deepseek_mla.py.j2"
    size_arg: ClassVar[str] = "latent_dims"

    kind: Literal["deepseek_mla"]
    q_rank: int = Field(..., ge=1, le=1 << 16, description="Width of the query latent (q_down, then a norm).")
    kv_rank: int = Field(..., ge=1, le=1 << 16, description="Width of the K/V latent (kv_down, then a norm).")
    nope_dim: int = Field(..., ge=1, le=4096, description="Per-head query/key width without RoPE.")
    rope_dim: int = Field(
        ..., ge=2, le=4096, description="Per-head query/key width with RoPE; one such key serves every head."
    )
    v_dim: int = Field(..., ge=1, le=4096, description="Per-head value width.")
    rope: bool = Field(True, description="Rotary position embedding on the rope part of Q and K.")
    rope_base: float = Field(10000.0, gt=1, le=1e9, description="RoPE base frequency.")
    rope_style: RopeStyle = Field("half", description=ROPE_STYLE_DOC)
    causal: bool = Field(True, description="Causal mask.")

    def matrices(self, m: ModelConfig) -> int:
        """Parameters of its projections (its two latent norms aside)."""
        d, H = m.d_model, m.n_heads
        q = d * self.q_rank + self.q_rank * H * (self.nope_dim + self.rope_dim)
        kv = d * (self.kv_rank + self.rope_dim) + self.kv_rank * H * (self.nope_dim + self.v_dim)
        return q + kv + H * self.v_dim * d

    def params(self, m: ModelConfig) -> int:
        return self.matrices(m) + m.norm.params(self.q_rank) + m.norm.params(self.kv_rank)

    def flops(self, m: ModelConfig, seq_len: int) -> int:
        """Projections, plus QK^T over nope + rope and AV over v per head (no causal discount)."""
        scores = 2 * seq_len * seq_len * m.n_heads * (self.nope_dim + self.rope_dim + self.v_dim)
        return 2 * self.params(m) * seq_len + scores

    def rope_width(self, m: ModelConfig) -> int:
        return self.rope_dim

    def rope_width_rule(self, block: str) -> str:
        return f"self.{block}_latent_dims[3]"

    def size(self, m: ModelConfig) -> tuple[int, ...]:
        return (self.q_rank, self.kv_rank, self.nope_dim, self.rope_dim, self.v_dim)

    def class_name(self, m: ModelConfig) -> str:
        return (
            "DeepSeekLatentAttention"
            + ("" if self.rope else "NoRope")
            + ("" if self.causal else "Bidirectional")
        )

    def config_entries(self, block: str, m: ModelConfig) -> list[ConfigEntry]:
        dims = ", ".join(str(n) for n in self.size(m))
        return [
            ConfigEntry(
                name=f"{block}_latent_dims",
                type="tuple[int, ...]",
                value=f"({dims})",
                comment="q_rank, kv_rank, nope, rope, v",
            )
        ]
