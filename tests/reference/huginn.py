"""Huginn-0125's forward pass, re-written by hand from the model's release code.

Written from reading ``seal-rg/recurrent-pretraining`` (recpre/raven_modeling_minimal.py and
raven_config_minimal.py, the code released with Huginn-0125), not from cartspec's generated code.
It is a plain function over a state dict keyed by Huginn's own parameter names
(``transformer.wte.weight``, ``transformer.prelude.0.attn.Wqkv.weight``, ...), so that a generated
model's weights have to be mapped onto them name by name; attention is an explicit masked softmax
(Huginn calls SDPA) and the rotary angles are computed on the fly (Huginn keeps a table).

What Huginn computes, in its order:

- x = wte(ids) * sqrt(d); no norm on the embedding.
- Every block is a "sandwich": x = n2(x + attn(n1(x))), then x = n4(x + mlp(n3(x))), four RMSNorms
  with weights, computed in float32, so the residual stream itself is normalised after each sublayer.
- Attention: one fused Wqkv (d -> 3d) split into q, k, v; a free ``qk_bias`` parameter of shape
  (2, 1, heads, head_dim) added to q and k before RoPE; interleaved RoPE (channels 2i and 2i+1
  rotate together) in float32; causal softmax with scale 1/sqrt(head_dim); proj (d -> d).
- MLP: one fused fc (d -> 2f); silu(first half) * second half; proj (f -> d).
- e = prelude(x) (not normalised); s_0 ~ TruncNormal(0, std, -3 std, 3 std) * sqrt(d) with
  std = sqrt(2 / (5 d)), drawn fresh every forward; then ``steps`` times:
  s = core(adapter(concat[s, e])) with the adapter a Linear(2d -> d) and the core 4 blocks.
- ln_f(s), the coda blocks, ln_f again (the same weights, used twice), and the head tied to wte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class HuginnConfig:
    """Huginn's sizes (RavenConfig's defaults are Huginn-0125's: d 5280, 55 heads, f 17920)."""

    vocab_size: int
    d_model: int
    n_heads: int
    ffn_hidden: int
    prelude_layers: int = 2
    core_layers: int = 4
    coda_layers: int = 2
    rope_base: float = 50_000.0
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def state_std(self) -> float:
        """The std of the initial state's draw before its sqrt(d) scale: sqrt(2 / (5 d))."""
        return math.sqrt(2 / (5 * self.d_model))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rotate_pairs(x: torch.Tensor, base: float) -> torch.Tensor:
    """Interleaved RoPE on x [B, T, H, D]: the pair (x[2i], x[2i+1]) turns by t * base^(-2i/D)."""
    T, D = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D)
    angle = torch.arange(T, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    even, odd = x.float()[..., 0::2], x.float()[..., 1::2]
    turned = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return turned.flatten(-2).type_as(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v under a lower-triangular mask; q, k, v are [B, H, T, D]."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T = q.shape[-2]
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v


def attention(w: Weights, prefix: str, cfg: HuginnConfig, x: torch.Tensor) -> torch.Tensor:
    B, T, d = x.shape
    H, D = cfg.n_heads, cfg.head_dim
    q, k, v = (x @ w[f"{prefix}.Wqkv.weight"].t()).split(d, dim=-1)
    q, k, v = q.reshape(B, T, H, D), k.reshape(B, T, H, D), v.reshape(B, T, H, D)
    bias = w[f"{prefix}.qk_bias"]  # (2, 1, H, D): q's then k's, before the rotation
    q, k = rotate_pairs(q + bias[0], cfg.rope_base), rotate_pairs(k + bias[1], cfg.rope_base)
    y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return y.transpose(1, 2).reshape(B, T, d) @ w[f"{prefix}.proj.weight"].t()


def gated_mlp(w: Weights, prefix: str, x: torch.Tensor) -> torch.Tensor:
    gate, up = (x @ w[f"{prefix}.fc.weight"].t()).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w[f"{prefix}.proj.weight"].t()


def sandwich_block(w: Weights, prefix: str, cfg: HuginnConfig, x: torch.Tensor) -> torch.Tensor:
    def norm(i: int, h: torch.Tensor) -> torch.Tensor:
        return rms_norm(h, w[f"{prefix}.norm_{i}.weight"], cfg.eps)

    x = norm(2, x + attention(w, f"{prefix}.attn", cfg, norm(1, x)))
    return norm(4, x + gated_mlp(w, f"{prefix}.mlp", norm(3, x)))


def initial_state(
    like: torch.Tensor, cfg: HuginnConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Huginn's "like-init" state: a standard-normal tensor shaped like e is drawn first (Huginn
    overwrites it, but the draw moves the RNG), then filled in place by a normal truncated at
    +-3 std, and scaled by sqrt(d)."""
    x = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    std = cfg.state_std
    torch.nn.init.trunc_normal_(x, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)
    return x * math.sqrt(cfg.d_model)


def forward(
    w: Weights,
    cfg: HuginnConfig,
    idx: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits [B, T, vocab] after ``steps`` core iterations (Huginn's eval default is 32)."""
    x = F.embedding(idx, w["transformer.wte.weight"]) * math.sqrt(cfg.d_model)
    for i in range(cfg.prelude_layers):
        x = sandwich_block(w, f"transformer.prelude.{i}", cfg, x)
    e = x
    s = initial_state(e, cfg, generator)
    for _ in range(steps):
        s = (torch.cat([s, e], dim=-1)) @ w["transformer.adapter.weight"].t()
        for i in range(cfg.core_layers):
            s = sandwich_block(w, f"transformer.core_block.{i}", cfg, s)
    ln_f = w["transformer.ln_f.weight"]
    x = rms_norm(s, ln_f, cfg.eps)
    for i in range(cfg.coda_layers):
        x = sandwich_block(w, f"transformer.coda.{i}", cfg, x)
    logits = rms_norm(x, ln_f, cfg.eps) @ w["transformer.wte.weight"].t()
    return logits.to(torch.promote_types(logits.dtype, torch.float32))  # Huginn's .float(); float64 stays
