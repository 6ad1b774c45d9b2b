"""OpenMythos's forward pass, re-written by hand from reading ``kyegomez/OpenMythos`` (open_mythos/main.py).

Written from the description of that code, not from cartspec's generated code. Its module and parameter
names are OpenMythos's own (``embed``, ``prelude.<i>.attn.q_down``, ``recurrent.block.ffn.router``,
``recurrent.injection.log_A``, ``recurrent.act.halt`` ...), so a state dict of the peer's model loads into
it unchanged; the computation is spelled out differently: attention as an explicit masked softmax, RoPE
on (even, odd) channel pairs with cos/sin tables built on the fly, and the mixture of experts run densely
(every expert on every token, weighted by a gate matrix that is zero outside each token's top-k).

What one forward computes (B batch, T positions, d = dim):

    x = embed(idx); x = prelude layers(x); e = x; h = e
    for t in 0 .. n_loops-1:
        c = RMSNorm(h + signal(t) + e)                 signal: sin/cos of t in the first d // 8 channels
        y = c + attn(norm(c)); y = y + MoE(norm(y))    the block keeps its residual
        y = y + (down(y) * scale[min(t, rows - 1)]) @ B_lora
        h = A * h + B * e + y                          A = exp(-exp(clamp(log_dt + log_A, -20, 20)))
        p = sigmoid(halt(h)); ACT: weight p, or the remainder 1 - cum once cum + p >= threshold
        h_out += weight * h  (positions already halted add nothing)
    logits = embed.weight @ RMSNorm(coda layers(h_out))

OpenMythos stops the loop once every position has halted; the positions' weights are zero from then on,
so running every loop gives the same logits (``forward`` here always runs them all).

:func:`load_generated` copies a generated model's state_dict in through an explicit name table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MythosReferenceConfig:
    vocab_size: int
    dim: int
    n_heads: int
    max_loop_iters: int  # loops by default, and rows of the LoRA scale table
    prelude_layers: int = 1
    coda_layers: int = 1
    attn_type: str = "mla"  # "mla" (DeepSeek-style latent attention) or "gqa"
    n_kv_heads: int = 1  # gqa only
    kv_lora_rank: int = 32
    q_lora_rank: int = 64
    qk_rope_head_dim: int = 16
    qk_nope_head_dim: int = 16
    v_head_dim: int = 16
    n_experts: int = 8
    n_shared_experts: int = 1
    n_experts_per_tok: int = 2
    expert_dim: int = 64
    lora_rank: int = 8
    act_threshold: float = 0.99
    rope_theta: float = 500_000.0

    @property
    def dense_hidden(self) -> int:
        """The prelude and coda SwiGLU width: 4d/3 rounded down, no multiple-of rounding."""
        return self.dim * 4 // 3

    @property
    def loop_dim(self) -> int:
        """Channels that receive the loop-index signal."""
        return self.dim // 8


# ----------------------------------------------------------------------------- pieces


def linear(n_in: int, n_out: int, bias: bool = False) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, in the input's dtype (OpenMythos's eps is always 1e-6)."""

    eps = 1e-6

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rope_pairs(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, H, T, D] by position * theta^(-2i/D)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D)
    angle = torch.arange(T, dtype=torch.float32, device=x.device)[:, None] * inv[None, :]  # [T, D/2]
    cos, sin = angle.cos(), angle.sin()
    even, odd = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(q width) with future positions masked) v; [B, H, T, *]."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T = q.shape[-2]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n * w] -> [B, n, T, w]."""
    B, T, _ = x.shape
    return x.reshape(B, T, n, -1).transpose(1, 2)


def unheads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, W = x.shape
    return x.transpose(1, 2).reshape(B, T, H * W)


class LatentAttention(nn.Module):
    """DeepSeek-style MLA: low-rank Q (with a norm), low-rank K/V (with a norm), one RoPE key shared by
    every head; RoPE only on the rope part of Q and K."""

    def __init__(self, cfg: MythosReferenceConfig):
        super().__init__()
        self.cfg = cfg
        d, H = cfg.dim, cfg.n_heads
        nope, rope, vw = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.q_down = linear(d, cfg.q_lora_rank)
        self.q_norm = RMSNorm(cfg.q_lora_rank)
        self.q_up_nope = linear(cfg.q_lora_rank, H * nope)
        self.q_up_rope = linear(cfg.q_lora_rank, H * rope)
        self.kv_down = linear(d, cfg.kv_lora_rank + rope)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank)
        self.kv_up = linear(cfg.kv_lora_rank, H * (nope + vw))
        self.wo = linear(H * vw, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, H = self.cfg, self.cfg.n_heads
        nope = cfg.qk_nope_head_dim
        latent_q = self.q_norm(self.q_down(x))
        q_nope = heads(self.q_up_nope(latent_q), H)
        q_rope = rope_pairs(heads(self.q_up_rope(latent_q), H), cfg.rope_theta)
        down = self.kv_down(x)
        latent_kv, k_shared = down[..., : cfg.kv_lora_rank], down[..., cfg.kv_lora_rank :]
        k_rope = rope_pairs(k_shared[:, None], cfg.rope_theta).expand(-1, H, -1, -1)  # one key, all heads
        kv = heads(self.kv_up(self.kv_norm(latent_kv)), H)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope], dim=-1)
        return self.wo(unheads(causal_softmax_attention(q, k, v)))


class GroupedAttention(nn.Module):
    """wq, wk, wv, wo; each K/V head serves n_heads / n_kv_heads consecutive query heads; RoPE on the
    whole head width."""

    def __init__(self, cfg: MythosReferenceConfig):
        super().__init__()
        self.cfg = cfg
        d, w = cfg.dim, cfg.dim // cfg.n_heads
        self.wq = linear(d, cfg.n_heads * w)
        self.wk = linear(d, cfg.n_kv_heads * w)
        self.wv = linear(d, cfg.n_kv_heads * w)
        self.wo = linear(cfg.n_heads * w, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        group = cfg.n_heads // cfg.n_kv_heads
        q = rope_pairs(heads(self.wq(x), cfg.n_heads), cfg.rope_theta)
        k = rope_pairs(heads(self.wk(x), cfg.n_kv_heads), cfg.rope_theta)
        v = heads(self.wv(x), cfg.n_kv_heads)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return self.wo(unheads(causal_softmax_attention(q, k, v)))


class Expert(nn.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate, self.up, self.down = linear(dim, hidden), linear(dim, hidden), linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MixtureOfExperts(nn.Module):
    """Router (no bias) -> softmax over every expert; the top-k are picked on logits + router_bias (a
    buffer), their probabilities renormalised to sum to 1; plus shared experts that always run."""

    def __init__(self, cfg: MythosReferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.router = linear(cfg.dim, cfg.n_experts)
        self.register_buffer("router_bias", torch.zeros(cfg.n_experts))
        self.routed_experts = nn.ModuleList(Expert(cfg.dim, cfg.expert_dim) for _ in range(cfg.n_experts))
        shared_hidden = cfg.expert_dim * cfg.n_experts_per_tok
        self.shared_experts = nn.ModuleList(
            Expert(cfg.dim, shared_hidden) for _ in range(cfg.n_shared_experts)
        )

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n_experts]: each token's renormalised probability on its chosen experts, 0 elsewhere."""
        logits = self.router(x)
        probs = logits.softmax(dim=-1)
        chosen = (logits + self.router_bias).topk(self.cfg.n_experts_per_tok, dim=-1).indices
        keep = torch.zeros_like(probs).scatter(-1, chosen, 1.0)
        picked = probs * keep
        return picked / picked.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)
        out = sum(g[..., i : i + 1] * expert(x) for i, expert in enumerate(self.routed_experts))
        for expert in self.shared_experts:
            out = out + expert(x)
        return out


class Block(nn.Module):
    """x + attn(attn_norm x), then + ffn(ffn_norm .): a dense SwiGLU of width 4d/3, or the MoE."""

    def __init__(self, cfg: MythosReferenceConfig, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim)
        self.attn = LatentAttention(cfg) if cfg.attn_type == "mla" else GroupedAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim)
        self.ffn = MixtureOfExperts(cfg) if moe else Expert(cfg.dim, cfg.dense_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class LoopLoRA(nn.Module):
    """delta = (down(y) * scale[min(t, rows - 1)]) @ B: a rank-r correction of the block output per loop."""

    def __init__(self, cfg: MythosReferenceConfig):
        super().__init__()
        self.down = linear(cfg.dim, cfg.lora_rank)
        self.B = nn.Parameter(torch.zeros(cfg.lora_rank, cfg.dim))
        self.scale = nn.Embedding(cfg.max_loop_iters, cfg.lora_rank)

    def forward(self, y: torch.Tensor, t: int) -> torch.Tensor:
        row = self.scale.weight[min(t, self.scale.num_embeddings - 1)]
        return (self.down(y) * row) @ self.B


class Injection(nn.Module):
    """h <- A * h + B * e + y, with A = exp(-exp(clamp(log_dt + log_A, -20, 20))) in (0, 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.log_A = nn.Parameter(torch.zeros(dim))
        self.log_dt = nn.Parameter(torch.zeros(1))
        self.B = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, h: torch.Tensor, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        decay = torch.exp(-torch.exp(torch.clamp(self.log_dt + self.log_A, -20.0, 20.0)))
        return decay * h + self.B * e + y


class Halting(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.halt = linear(dim, 1, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.halt(h))[..., 0]


def loop_signal(t: int, dim: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[dim]: sin(t w_j) for j < ceil(width/2), then cos(t w_j), cut to width, zeros after;
    w_j = 10000^(-2j / width)."""
    j = torch.arange(0, width, 2, dtype=dtype, device=device)
    angle = t * (1.0 / 10_000.0 ** (j / width))
    signal = torch.zeros(dim, dtype=dtype, device=device)
    signal[:width] = torch.cat([angle.sin(), angle.cos()])[:width]
    return signal


class Recurrent(nn.Module):
    def __init__(self, cfg: MythosReferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.block = Block(cfg, moe=True)
        self.injection = Injection(cfg.dim)
        self.act = Halting(cfg.dim)
        self.lora = LoopLoRA(cfg)
        self.norm = RMSNorm(cfg.dim)

    def forward(self, e: torch.Tensor, n_loops: int) -> torch.Tensor:
        cfg = self.cfg
        h = e
        out = torch.zeros_like(e)
        spent = torch.zeros(e.shape[:-1], dtype=e.dtype, device=e.device)  # cumulative halting mass
        done = torch.zeros(e.shape[:-1], dtype=torch.bool, device=e.device)
        for t in range(n_loops):
            signal = loop_signal(t, cfg.dim, cfg.loop_dim, e.dtype, e.device)
            y = self.block(self.norm(h + signal + e))
            y = y + self.lora(y, t)
            h = self.injection(h, e, y)
            p = self.act(h)
            live = (~done).to(e.dtype)
            crosses = spent + p >= cfg.act_threshold
            weight = torch.where(crosses, (1.0 - spent).clamp(min=0.0), p) * live
            out = out + weight[..., None] * h
            spent = spent + p * live
            done = done | (spent >= cfg.act_threshold)
        return out


# ----------------------------------------------------------------------------- the model


class MythosReference(nn.Module):
    def __init__(self, cfg: MythosReferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.prelude = nn.ModuleList(Block(cfg, moe=False) for _ in range(cfg.prelude_layers))
        self.recurrent = Recurrent(cfg)
        self.coda = nn.ModuleList(Block(cfg, moe=False) for _ in range(cfg.coda_layers))
        self.norm = RMSNorm(cfg.dim)

    def forward(self, idx: torch.Tensor, n_loops: int | None = None) -> torch.Tensor:
        x = self.embed(idx)
        for layer in self.prelude:
            x = layer(x)
        x = self.recurrent(x, self.cfg.max_loop_iters if n_loops is None else n_loops)
        for layer in self.coda:
            x = layer(x)
        return self.norm(x) @ self.embed.weight.t()  # tied head


# ----------------------------------------------------------------------------- loading generated weights

# whole generated module paths -> OpenMythos's (longest first; the rest of a name is kept)
_MODULES = (
    ("embedding.", "embed."),
    ("core.", "recurrent.block."),
    ("inject.", "recurrent.norm."),
    ("gate.", "recurrent.injection."),
    ("lora.scale", "recurrent.lora.scale.weight"),  # a table of rows, an Embedding in OpenMythos
    ("lora.", "recurrent.lora."),
    ("halt.proj.", "recurrent.act.halt."),
)
# one component of a generated name -> OpenMythos's
_PARTS = {
    "o_proj": "wo",
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "experts": "routed_experts",
    "shared": "shared_experts",
}
# buffers the generated model may keep; the reference computes its own (router_bias it holds too)
_BUFFER_SUFFIXES = ("rotary.cos", "rotary.sin", "loop_embedding.freq")


def reference_name(generated: str) -> str:
    """A generated model's parameter (or router_bias) name -> the same tensor's name in MythosReference."""
    for prefix, theirs in _MODULES:
        if generated.startswith(prefix):
            generated = theirs + generated[len(prefix) :]
            break
    return ".".join(_PARTS.get(part, part) for part in generated.split("."))


def load_generated(model: MythosReference, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a generated OpenMythos-shaped model's state_dict: every generated tensor lands on exactly one
    reference tensor, and every reference tensor is filled."""
    generated = [k for k in state_dict if not k.endswith(_BUFFER_SUFFIXES)]
    tensors = {reference_name(k): state_dict[k] for k in generated}
    expected = model.state_dict().keys()
    unknown, absent = sorted(tensors.keys() - expected), sorted(expected - tensors.keys())
    if unknown or absent or len(tensors) != len(generated):  # two generated names on one reference name
        raise KeyError(
            f"generated names not in the reference: {unknown}; reference names not generated: {absent}"
        )
    model.load_state_dict(tensors, strict=True)
