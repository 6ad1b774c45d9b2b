"""Attention kinds: full-rank multi-head (MHA/GQA/MQA), CART's latent K/V, and anchor cross-attention.

No kind has biases. One attention use mixes tokens through one T x T score matrix per head
group: 4 * T^2 * d forward FLOPs per sequence (QK^T and AV), besides its projections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from cartspec.components.base import ConfigEntry, Identifier, Problems, Strict, register

if TYPE_CHECKING:
    from cartspec.schema import ModelConfig


RopeStyle = Literal["half", "interleaved"]
ROPE_STYLE_DOC = (
    "half: channel i rotates with i + head_dim/2 (rotate-half, CART, Llama); "
    "interleaved: channels 2i and 2i+1 rotate together (Huginn, Parcae, OpenMythos)."
)


class Attention(Strict):
    """What every attention kind declares for the graph, the accounting and the code generator."""

    template: ClassVar[str]
    reads_anchor: ClassVar[bool] = False  # cross-attention reads an anchor's K, V
    size_arg: ClassVar[str] = ""  # the per-block size its generated class takes (kv_heads ...)

    def resolved(self, m: ModelConfig) -> Attention:
        """This attention with every size default made concrete."""
        return self

    def params(self, m: ModelConfig) -> int:
        raise NotImplementedError

    def flops(self, m: ModelConfig, seq_len: int) -> int:
        """Forward FLOPs per sequence of one use: projections plus the score matrix."""
        return 2 * self.params(m) * seq_len + 4 * seq_len * seq_len * m.d_model

    def class_name(self, m: ModelConfig) -> str:
        raise NotImplementedError

    def size(self, m: ModelConfig) -> int:
        """The value of ``size_arg`` once resolved."""
        raise NotImplementedError

    def config_entries(self, block: str, m: ModelConfig) -> list[ConfigEntry]:
        """The per-block sizes of the generated Config (from the spec as written)."""
        return []

    def grouped(self, m: ModelConfig) -> bool:
        """True when K/V heads are repeated to the query heads."""
        return False

    def rope_width(self, m: ModelConfig) -> int:
        """Channels of one head's query and key that RoPE rotates."""
        return m.head_dim

    def rope_width_rule(self, block: str) -> str:
        """``rope_width`` in the generated Config's terms."""
        return "self.head_dim"

    def problems(self, m: ModelConfig) -> Problems:
        """Rules that need the model's sizes (the schema checks each value alone)."""
        return []


def _suffix(rope: bool, causal: bool) -> str:
    return ("" if rope else "NoRope") + ("" if causal else "Bidirectional")


@register("attention")
class MHA(Attention):
    """Multi-head self-attention with full-rank Q, K, V and O projections (GQA/MQA via kv_heads)."""

    template: ClassVar[str] = "mha.py.j2"
    size_arg: ClassVar[str] = "kv_heads"

    kind: Literal["mha"]
    kv_heads: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="K/V heads; default = query heads (MHA); fewer = GQA; 1 = MQA.",
    )
    rope: bool = Field(True, description="Rotary position embedding on Q and K.")
    rope_base: float = Field(10000.0, gt=1, le=1e9, description="RoPE base frequency.")
    rope_style: RopeStyle = Field("half", description=ROPE_STYLE_DOC)
    causal: bool = Field(True, description="Causal mask.")
    fused_qkv: bool = Field(
        False,
        description="One qkv matrix (d -> (heads + 2 kv_heads) x head_dim) split into Q, K, V (Huginn's Wqkv).",
    )
    qk_bias: bool = Field(
        False,
        description="A learned bias on Q and K before RoPE: one (2, 1, heads, head_dim) parameter, zero at init (Huginn's); needs kv_heads = heads.",
    )
    qk_norm: bool = Field(
        False,
        description="A parameter-free RMS norm of q and k over the head dim after RoPE "
        "(eps: float32's machine epsilon), as Parcae.",
    )

    def resolved(self, m: ModelConfig) -> MHA:
        return self.model_copy(update={"kv_heads": self.size(m)})

    def size(self, m: ModelConfig) -> int:
        return kv_heads_or_all(m, self.kv_heads)

    def params(self, m: ModelConfig) -> int:
        bias = 2 * m.n_heads * m.head_dim if self.qk_bias else 0
        return 2 * m.d_model * m.d_model + 2 * m.d_model * self.size(m) * m.head_dim + bias

    def grouped(self, m: ModelConfig) -> bool:
        return self.size(m) < m.n_heads

    def problems(self, m: ModelConfig) -> Problems:
        found = kv_heads_problems(self.kv_heads, m)
        if self.qk_bias and self.kv_heads is not None and self.kv_heads != m.n_heads:
            found.append(
                (
                    ("qk_bias",),
                    f"Huginn's qk_bias has one row per head: it needs kv_heads = heads ({m.n_heads})",
                )
            )
        return found

    def class_name(self, m: ModelConfig) -> str:
        base = "GroupedQueryAttention" if self.grouped(m) else "SelfAttention"
        fused = "Fused" if self.fused_qkv else ""
        name = fused + base + ("QKBias" if self.qk_bias else "") + _suffix(self.rope, self.causal)
        return name + ("QKNorm" if self.qk_norm else "")

    def config_entries(self, block: str, m: ModelConfig) -> list[ConfigEntry]:
        heads = self.size(m)
        note = "MHA" if heads == m.n_heads else ("MQA" if heads == 1 else "GQA")
        if self.kv_heads is None:
            return [
                ConfigEntry(
                    name=f"{block}_kv_heads",
                    type="int",
                    rule="self.n_heads",
                    comment=f"K/V heads = query heads ({note})",
                )
            ]
        return [ConfigEntry(name=f"{block}_kv_heads", type="int", value=str(heads), comment=note)]


@register("attention")
class MLA(Attention):
    """CART's simplified latent-KV attention: full-rank Q; K and V up-projected from one latent."""

    template: ClassVar[str] = "mla.py.j2"
    size_arg: ClassVar[str] = "kv_latent"

    kind: Literal["mla"]
    kv_latent: int | None = Field(
        None, ge=1, le=1 << 16, description="Latent width of K/V; default d_model / 4."
    )
    rope: bool = Field(True, description="Rotary position embedding on Q and K (full head dim).")
    rope_base: float = Field(10000.0, gt=1, le=1e9, description="RoPE base frequency.")
    rope_style: RopeStyle = Field("half", description=ROPE_STYLE_DOC)
    causal: bool = Field(True, description="Causal mask.")

    def resolved(self, m: ModelConfig) -> MLA:
        return self.model_copy(update={"kv_latent": self.size(m)})

    def size(self, m: ModelConfig) -> int:
        return latent_width(m, self.kv_latent)

    def params(self, m: ModelConfig) -> int:
        return 2 * m.d_model * m.d_model + 3 * m.d_model * self.size(m)  # q, o; kv_down, k_up, v_up

    def class_name(self, m: ModelConfig) -> str:
        return "LatentSelfAttention" + _suffix(self.rope, self.causal)

    def config_entries(self, block: str, m: ModelConfig) -> list[ConfigEntry]:
        return [latent_entry(f"{block}_kv_latent", self.kv_latent)]


@register("attention")
class Cross(Attention):
    """Cross-attention from the loop state to an anchor's K and V (only q_proj and o_proj)."""

    template: ClassVar[str] = "cross.py.j2"
    reads_anchor: ClassVar[bool] = True

    kind: Literal["cross"]
    to: Identifier = Field("anchor", description="The anchor block whose K, V are read.")
    rope: Literal[False] = Field(False, description="Always false: the anchor's K carries no RoPE.")
    causal: bool = Field(
        True,
        description="Query t sees anchor positions 0..t. CART needs true (false leaks the future).",
    )

    def params(self, m: ModelConfig) -> int:
        return 2 * m.d_model * m.d_model  # q_proj, o_proj; K and V come from the anchor

    def class_name(self, m: ModelConfig) -> str:
        return "AnchorCrossAttention" + ("" if self.causal else "Bidirectional")


def kv_heads_or_all(m: ModelConfig, kv_heads: int | None) -> int:
    """A K/V head count: as given, else one per query head (plain MHA)."""
    return kv_heads if kv_heads is not None else m.n_heads


def kv_heads_problems(kv_heads: int | None, m: ModelConfig) -> Problems:
    """K/V heads must divide the query heads: each serves a whole group of them."""
    n_heads = max(m.n_heads, 1)
    if kv_heads is not None and (kv_heads > n_heads or n_heads % kv_heads):
        return [(("kv_heads",), f"{kv_heads} does not divide the {n_heads} query heads")]
    return []


def latent_width(m: ModelConfig, latent: int | None) -> int:
    """A latent K/V width: as given, else d_model / 4 (CART's choice)."""
    return latent if latent is not None else m.d_model // 4


def latent_entry(name: str, latent: int | None) -> ConfigEntry:
    if latent is None:
        return ConfigEntry(name=name, type="int", rule="self.d_model // 4", comment="d_model / 4")
    return ConfigEntry(name=name, type="int", value=str(latent))
