"""The CART author's forward pass, re-written by hand from the paper and docs/cart.md.

Written from the description of ``ccapps42/CART`` (model/cart.py, layers.py, attention.py and the
hyper/lti/lie modules of the author's design; the semantics are in docs/cart.md), not from cartspec's
generated code: its own module names (the author's style: ``tok_emb``, ``kv_proj``, ``hyper``,
``lti``, ``lie``, ``norm_f``), attention as an explicit masked softmax instead of SDPA, RoPE and the
loop-index table computed on the fly. Ablations are the author's training flags
(``--disable-hyper``, ``--disable-lti``, ``--unshare-core``, ``--self-attn-core``,
``--unfreeze-kv``, disable_lie) plus ``contractive``: the update the paper *describes*,
``sigmoid(a) * h_in + delta``, where delta is the core block's output minus its input.

:func:`load_generated` copies a generated model's state_dict into an :class:`AuthorCART` through an
explicit table of names, so a wrongly wired weight in the generated code cannot hide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AuthorConfig:
    vocab_size: int
    d_model: int
    n_heads: int
    ffn_hidden: int
    prelude_layers: int
    n_loops: int
    coda_layers: int = 1
    eps: float = 1e-6
    rope_base: float = 10_000.0
    n_hyper: int = 3  # hyper-connection buffer length
    hyper_init: tuple[float, ...] = (1.0, 0.0, 0.0)
    lti_init: float = 0.9  # sigmoid(a) at init
    lie_dim: int = 32
    lie_max_loops: int = 16
    # the author's ablation flags
    disable_hyper: bool = False
    disable_lti: bool = False
    disable_lie: bool = False
    unshare_core: bool = False
    self_attn_core: bool = False
    unfreeze_kv: bool = False
    contractive: bool = False  # sigmoid(a) * h_in + delta instead of sigmoid(a) * h_in + block(h_in)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_latent(self) -> int:
        return self.d_model // 4  # mla_compression_ratio = 4


# ----------------------------------------------------------------------------- pieces


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def apply_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE over the full head dim; x is [B, H, T, D]."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D))
    angles = torch.arange(T, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)  # [T, D]
    first, second = x[..., : D // 2], x[..., D // 2 :]
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * angles.cos() + rotated.float() * angles.sin()).type_as(x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with an explicit lower-triangular mask."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def to_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).permute(0, 2, 1, 3)


def from_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, T, H * D)


def linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


class MLASelfAttention(nn.Module):
    """Full-rank Q; K and V up-projected from one latent; RoPE on Q and K; causal."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.kv_latent
        self.wq, self.w_dkv, self.w_uk, self.w_uv, self.wo = (
            linear(d, d),
            linear(d, c),
            linear(c, d),
            linear(c, d),
            linear(d, d),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, base = self.cfg.n_heads, self.cfg.rope_base
        c_kv = self.w_dkv(x)
        q = apply_rope(to_heads(self.wq(x), H), base)
        k = apply_rope(to_heads(self.w_uk(c_kv), H), base)
        v = to_heads(self.w_uv(c_kv), H)
        return self.wo(from_heads(attend(q, k, v, causal=True)))


class MLAKVProjection(nn.Module):
    """The anchor's own latent K/V projection; no RoPE."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.kv_latent
        self.w_dkv, self.w_uk, self.w_uv = linear(d, c), linear(c, d), linear(c, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_kv = self.w_dkv(x)
        return to_heads(self.w_uk(c_kv), self.cfg.n_heads), to_heads(self.w_uv(c_kv), self.cfg.n_heads)


class MLACrossAttention(nn.Module):
    """Query from the loop state, K and V from the anchor; no RoPE; causal (the fixed version)."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.cfg = cfg
        self.wq, self.wo = linear(cfg.d_model, cfg.d_model), linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = to_heads(self.wq(x), self.cfg.n_heads)
        return self.wo(from_heads(attend(q, k, v, causal=True)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        d, f = cfg.d_model, cfg.ffn_hidden
        self.w1, self.w3, self.w2 = linear(d, f), linear(d, f), linear(f, d)  # gate, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PreludeLayer(nn.Module):
    """Also the coda layer: x + MLA(norm(x)), then x + SwiGLU(norm(x))."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.d_model, cfg.eps), MLASelfAttention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.d_model, cfg.eps), SwiGLU(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CoreBlock(nn.Module):
    """h = h_in + CrossAttn(norm(h_in), K, V); h + SwiGLU(norm(h)). Self-attention (MLA + RoPE) in the
    self-attention-core ablation."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.self_attn = cfg.self_attn_core
        self.norm1 = RMSNorm(cfg.d_model, cfg.eps)
        if self.self_attn:
            self.attn = MLASelfAttention(cfg)
        else:
            self.xattn = MLACrossAttention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.d_model, cfg.eps), SwiGLU(cfg)

    def forward(self, h: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None) -> torch.Tensor:
        mixed = self.attn(self.norm1(h)) if self.self_attn else self.xattn(self.norm1(h), k, v)
        h = h + mixed
        return h + self.mlp(self.norm2(h))


class HyperConnection(nn.Module):
    """h~ = sum_i softmax(w)_i * buffer[i], buffer[0] the most recent state."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(cfg.hyper_init, dtype=torch.float32))

    def combine(self, buffer: list[torch.Tensor]) -> torch.Tensor:
        mix = self.w.softmax(dim=0)
        return sum(mix[i] * state for i, state in enumerate(buffer))


class LTI(nn.Module):
    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.a = nn.Parameter(torch.full((cfg.d_model,), math.log(cfg.lti_init / (1 - cfg.lti_init))))

    def spectral_radius(self) -> float:
        return torch.sigmoid(self.a).max().item()


class LoopIndexEmbedding(nn.Module):
    """pe[r, 2k] = sin(r * w_k), pe[r, 2k+1] = cos(r * w_k), w_k = exp(-ln(1e4) * 2k / dim); Linear(dim -> d)."""

    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        dim = cfg.lie_dim
        rows = []
        for r in range(cfg.lie_max_loops):
            row = []
            for k in range(dim // 2):
                w = math.exp(-math.log(10_000.0) * 2 * k / dim)
                row += [math.sin(r * w), math.cos(r * w)]
            rows.append(row)
        self.register_buffer("pe", torch.tensor(rows, dtype=torch.float32), persistent=False)
        self.proj = linear(dim, cfg.d_model)

    def forward(self, r: int) -> torch.Tensor:
        return self.proj(self.pe[r])


# ----------------------------------------------------------------------------- the model


class AuthorCART(nn.Module):
    def __init__(self, cfg: AuthorConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.prelude = nn.ModuleList(PreludeLayer(cfg) for _ in range(cfg.prelude_layers))
        if not cfg.self_attn_core:
            self.kv_proj = MLAKVProjection(cfg)
        if cfg.unshare_core:
            self.cores = nn.ModuleList(CoreBlock(cfg) for _ in range(cfg.n_loops))
        else:
            self.core = CoreBlock(cfg)
        if not cfg.disable_hyper:
            self.hyper = HyperConnection(cfg)
        if not cfg.disable_lti:
            self.lti = LTI(cfg)
        if not cfg.disable_lie:
            self.lie = LoopIndexEmbedding(cfg)
        self.coda = nn.ModuleList(PreludeLayer(cfg) for _ in range(cfg.coda_layers))
        self.norm_f = RMSNorm(cfg.d_model, cfg.eps)

    def forward(self, idx: torch.Tensor, n_loops: int | None = None) -> torch.Tensor:
        cfg = self.cfg
        R = cfg.n_loops if n_loops is None else n_loops
        x = self.tok_emb(idx)
        for layer in self.prelude:
            x = layer(x)
        e = x  # the context anchor: final prelude output, post-residual, not normed
        k = v = None
        if not cfg.self_attn_core and not cfg.unfreeze_kv:
            k, v = self.kv_proj(e)  # once per forward
        buffer = [e] * cfg.n_hyper
        for r in range(R):
            h_in = buffer[0] if cfg.disable_hyper else self.hyper.combine(buffer)
            if not cfg.disable_lie:
                h_in = h_in + self.lie(r)
            if cfg.unfreeze_kv:
                k, v = self.kv_proj(h_in)
            block = self.cores[r] if cfg.unshare_core else self.core
            out = block(h_in, k, v)  # already h_in + delta: the block keeps its residuals
            if cfg.contractive:
                out = out - h_in  # delta alone
            h = h_in + out if cfg.disable_lti else torch.sigmoid(self.lti.a) * h_in + out
            buffer = [h] + buffer[:-1]
        x = buffer[0]
        for layer in self.coda:
            x = layer(x)
        return self.norm_f(x) @ self.tok_emb.weight.t()  # tied head


# ----------------------------------------------------------------------------- loading generated weights

# generated name (relative to a layer) -> author name
_LAYER = {
    "attn_norm.weight": "norm1.weight",
    "attn.q_proj.weight": "attn.wq.weight",
    "attn.kv_down.weight": "attn.w_dkv.weight",
    "attn.k_up.weight": "attn.w_uk.weight",
    "attn.v_up.weight": "attn.w_uv.weight",
    "attn.o_proj.weight": "attn.wo.weight",
    "ffn_norm.weight": "norm2.weight",
    "ffn.gate_proj.weight": "mlp.w1.weight",
    "ffn.up_proj.weight": "mlp.w3.weight",
    "ffn.down_proj.weight": "mlp.w2.weight",
}
_CROSS_CORE = {
    "attn_norm.weight": "norm1.weight",
    "attn.q_proj.weight": "xattn.wq.weight",
    "attn.o_proj.weight": "xattn.wo.weight",
    "ffn_norm.weight": "norm2.weight",
    "ffn.gate_proj.weight": "mlp.w1.weight",
    "ffn.up_proj.weight": "mlp.w3.weight",
    "ffn.down_proj.weight": "mlp.w2.weight",
}
_ANCHOR = {
    "anchor.kv_down.weight": "kv_proj.w_dkv.weight",
    "anchor.k_up.weight": "kv_proj.w_uk.weight",
    "anchor.v_up.weight": "kv_proj.w_uv.weight",
}
# buffers the generated model may keep in its state_dict; the reference computes its own
_BUFFER_SUFFIXES = ("rotary.cos", "rotary.sin", "loop_embedding.table")


def name_map(cfg: AuthorConfig) -> dict[str, str]:
    """Every generated parameter name of a CART with these flags -> its name in AuthorCART."""
    names = {"embedding.weight": "tok_emb.weight", "norm.weight": "norm_f.weight"}
    for block, count in (("prelude", cfg.prelude_layers), ("coda", cfg.coda_layers)):
        for i in range(count):
            names |= {f"{block}.{i}.{g}": f"{block}.{i}.{a}" for g, a in _LAYER.items()}
    core = _LAYER if cfg.self_attn_core else _CROSS_CORE
    if cfg.unshare_core:
        for r in range(cfg.n_loops):
            names |= {f"core.{r}.{g}": f"cores.{r}.{a}" for g, a in core.items()}
    else:
        names |= {f"core.{g}": f"core.{a}" for g, a in core.items()}
    if not cfg.self_attn_core:
        names |= _ANCHOR
    if not cfg.disable_hyper:
        names["state_mix.weights"] = "hyper.w"
    if not cfg.disable_lti:
        names["gate.a"] = "lti.a"
    if not cfg.disable_lie:
        names["loop_embedding.proj.weight"] = "lie.proj.weight"
    return names


def load_generated(model: AuthorCART, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a generated CART's state_dict; every generated parameter must land on exactly one author
    parameter and every author parameter must be filled."""
    names = name_map(model.cfg)
    params = {k: v for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES)}
    unknown = sorted(params.keys() - names.keys())
    absent = sorted(names.keys() - params.keys())
    if unknown or absent:
        raise KeyError(f"generated names not in the map: {unknown}; mapped names not generated: {absent}")
    model.load_state_dict({names[k]: v for k, v in params.items()}, strict=True)
