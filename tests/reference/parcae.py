"""Parcae's forward pass, re-written by hand from reading ``sandyresearch/parcae`` (parcae_lm).

A test-only reference, independent of cartspec's generated code: it is a plain function over a
state dict keyed by Parcae's own parameter names (``transformer.wte.weight``,
``transformer.adapter.B``, ``value_embeds.3.weight`` ...), with attention as an explicit masked
softmax and the interleaved RoPE table computed on the fly. What it computes (Parcae's shipped
configs: pre-norm blocks, ReLU² MLP, qk-norm, value embeddings, diagonal injection):

    e   = ln_prelude(prelude(wte(ids)))
    h   = h0                                    # TruncNormal(0, std, ±3 std), std = sqrt(2 / (5 d))
    for each loop:
        u = exp(-softplus(dt_bias) * exp(A_log)) * h + softplus(dt_bias) * (e @ B^T)
        h = core(u)                             # the core's blocks, shared by every loop
    logits = ln_f(coda(C(h))) @ wte^T

A block is ``x + attn(n1(x))`` then ``x + mlp(n2(x))``; RMSNorm weights, eps 1e-5, in float32.
Attention: separate q, k, v, o projections, RoPE on adjacent channel pairs (2i, 2i+1), then a
parameter-free RMS norm of q and k (eps = float32 machine epsilon), causal softmax at 1/sqrt(D).
A layer with a value-embedding table and a gate adds ``2 sigmoid(gate(x[..., :32])) * table[ids]``
to v, one gate value per K/V head; the table of a core layer is read again in every loop.
The MLP is ``proj(relu(fc(x))^2 * 0.5)``. Parcae's value-embedding tables are numbered over the
stack prelude, core (once), coda; :func:`forward` applies one wherever both it and its layer's
gate are in the weights, so the reference needs no layer rule of its own.

:func:`gpt_forward` is the registry's GPT baseline: the same blocks in one stack, no loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]
GATE_CHANNELS = 32  # the value-embedding gate reads the first 32 channels of the block input


@dataclass(frozen=True)
class ParcaeShape:
    """The sizes the weights do not spell out."""

    n_heads: int
    n_kv_heads: int
    prelude: int
    core: int
    coda: int
    loops: int
    eps: float = 1e-5
    rope_base: float = 50_000.0
    prelude_norm: bool = True
    state_std: float | None = None  # None: sqrt(2 / (5 d)), Parcae's "like-init"


def initial_state(
    shape: tuple[int, ...], std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Parcae's "like-init": a standard normal draw, then overwritten in place by a truncated normal
    at +-3 std (the first draw only moves the random stream along, but a seeded run needs it)."""
    h = torch.randn(shape, generator=generator)
    torch.nn.init.trunc_normal_(h, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)
    return h


def rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    x32 = x.float()
    y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)
    return y if weight is None else y * weight


def rope_pairs(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) by t * base^(-2i/D); x is [B, T, H, D]."""
    T, D = x.shape[1], x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    angle = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]  # [T, D/2]
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return out.flatten(-2).type_as(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] each (K, V heads already repeated); explicit masked softmax."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def block(w: Weights, p: str, x: torch.Tensor, shape: ParcaeShape, ve: torch.Tensor | None) -> torch.Tensor:
    """One pre-norm block whose parameters are named ``{p}.norm_1.weight`` ... in ``w``."""
    B, T, d = x.shape
    H, G = shape.n_heads, shape.n_kv_heads
    D = w[f"{p}.attn.c_q.weight"].shape[0] // H
    a = rms(x, w[f"{p}.norm_1.weight"], shape.eps)
    q = (a @ w[f"{p}.attn.c_q.weight"].T).view(B, T, H, D)
    k = (a @ w[f"{p}.attn.c_k.weight"].T).view(B, T, G, D)
    v = (a @ w[f"{p}.attn.c_v.weight"].T).view(B, T, G, D)
    gate_w = w.get(f"{p}.attn.ve_gate.weight")
    if ve is not None and gate_w is not None:
        gate = 2 * torch.sigmoid(a[..., :GATE_CHANNELS] @ gate_w.T)  # [B, T, G]
        v = v + gate[..., None] * ve.view(B, T, G, D)
    q, k = rope_pairs(q, shape.rope_base), rope_pairs(k, shape.rope_base)
    eps = torch.finfo(q.dtype).eps
    q, k = rms(q, None, eps), rms(k, None, eps)
    k, v = k.repeat_interleave(H // G, dim=2), v.repeat_interleave(H // G, dim=2)
    y = causal_attention(q, k, v).reshape(B, T, H * D)
    x = x + y @ w[f"{p}.attn.c_proj.weight"].T
    m = rms(x, w[f"{p}.norm_2.weight"], shape.eps) @ w[f"{p}.mlp.fc.weight"].T
    return x + (F.relu(m).pow(2) * 0.5) @ w[f"{p}.mlp.proj.weight"].T


def value_embedding(w: Weights, index: int, ids: torch.Tensor) -> torch.Tensor | None:
    table = w.get(f"value_embeds.{index}.weight")
    return None if table is None else table[ids]


def forward(
    w: Weights,
    shape: ParcaeShape,
    ids: torch.Tensor,
    h0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits [B, T, vocab] (float32) of a Parcae model; ``h0`` overrides the random initial state."""
    wte = w["transformer.wte.weight"]
    x = wte[ids]
    for i in range(shape.prelude):
        x = block(w, f"transformer.prelude.{i}", x, shape, value_embedding(w, i, ids))
    e = rms(x, w["transformer.ln_prelude.weight"], shape.eps) if shape.prelude_norm else x

    B_in = w["transformer.adapter.B"]  # [d_rec, d]
    d_rec = B_in.shape[0]
    if h0 is None:
        std = shape.state_std if shape.state_std is not None else math.sqrt(2 / (5 * wte.shape[1]))
        h0 = initial_state((*ids.shape, d_rec), std, generator)
    step = F.softplus(w["transformer.adapter.dt_bias"])
    decay = torch.exp(-step * torch.exp(w["transformer.adapter.A_log"]))
    core_ve = [value_embedding(w, shape.prelude + j, ids) for j in range(shape.core)]
    h = h0
    for _ in range(shape.loops):
        h = h * decay + step * (e @ B_in.T)
        for j in range(shape.core):
            h = block(w, f"transformer.core_block.{j}", h, shape, core_ve[j])

    x = h @ w["transformer.C.weight"].T
    for i in range(shape.coda):
        ve = value_embedding(w, shape.prelude + shape.core + i, ids)
        x = block(w, f"transformer.coda.{i}", x, shape, ve)
    x = rms(x, w["transformer.ln_f.weight"], shape.eps)
    return (x @ w.get("lm_head.weight", wte).T).float()


def gpt_forward(w: Weights, shape: ParcaeShape, layers: int, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the registry's GPT baseline: ``layers`` blocks named ``transformer.h.{i}``."""
    wte = w["transformer.wte.weight"]
    x = wte[ids]
    for i in range(layers):
        x = block(w, f"transformer.h.{i}", x, shape, value_embedding(w, i, ids))
    x = rms(x, w["transformer.ln_f.weight"], shape.eps)
    return (x @ wte.T).float()
