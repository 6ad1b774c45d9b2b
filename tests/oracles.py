"""Test-only reference computations of every component kind, written from the definitions in
README.md and docs/ (not from cartspec's templates or generated code, which this module never
imports): plain tensor arithmetic on float32 tensors, attention as an explicit masked softmax with
an explicit query-head -> K/V-head table, RoPE as a per-pair rotation, the loop table computed on
the fly.

Each function takes the weights it needs as tensors; :func:`model_logits` runs a whole model from
its spec data (the plain dict a spec file loads to, defaults applied here from the docs) and a
generated model's ``state_dict`` (read by name, so a wrongly wired weight cannot hide).
"""

from __future__ import annotations

import math
from typing import Any

import torch

Weights = dict[str, torch.Tensor]

# ----------------------------------------------------------------------------- the kinds


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T: a bias-free Linear whose weight is [out, in]."""
    return torch.einsum("...i,oi->...o", x, w)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, over the channel axis."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, the biased variance over channels."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def swiglu(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)), silu(z) = z * sigmoid(z). Fused: gate_up's first hidden rows
    are the gate, the rest the up projection."""
    if "gate_up.weight" in w:
        gate, up = w["gate_up.weight"].tensor_split(2, dim=0)
        w = {"gate_proj.weight": gate, "up_proj.weight": up, "down_proj.weight": w["down_proj.weight"]}
    g = linear(x, w["gate_proj.weight"])
    return linear(g * torch.sigmoid(g) * linear(x, w["up_proj.weight"]), w["down_proj.weight"])


def gelu_mlp(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """proj(gelu(fc(x))), the exact (erf) GELU: z * Phi(z)."""
    z = linear(x, w["fc.weight"])
    return linear(z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))), w["proj.weight"])


def relu2_mlp(x: torch.Tensor, w: Weights, scale: float) -> torch.Tensor:
    """proj(max(fc(x), 0)^2 * scale)."""
    z = linear(x, w["fc.weight"]).clamp(min=0)
    return linear(z * z * scale, w["proj.weight"])


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n * D] -> [B, n, T, D]: head j is channels j*D .. (j+1)*D - 1."""
    B, T, C = x.shape
    return torch.stack([x[..., j * (C // n) : (j + 1) * (C // n)] for j in range(n)], dim=1)


def unheads(y: torch.Tensor) -> torch.Tensor:
    """[B, n, T, D] -> [B, T, n * D], heads side by side in order."""
    return torch.cat([y[:, j] for j in range(y.shape[1])], dim=-1)


def rotate(x: torch.Tensor, base: float, style: str = "half") -> torch.Tensor:
    """RoPE over the full head dim: pair i at position t turns by the angle t * base^(-2i/D).
    Rotate-half pairs channel i with i + D/2; interleaved pairs channels 2i and 2i + 1."""
    T, D = x.shape[-2], x.shape[-1]
    half = D // 2
    i = torch.arange(half, dtype=torch.float64)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * base ** (-2.0 * i / D)[None, :]
    cos, sin = angle.cos().float(), angle.sin().float()
    a, b = (x[..., 0::2], x[..., 1::2]) if style == "interleaved" else (x[..., :half], x[..., half:])
    turned_a, turned_b = a * cos - b * sin, b * cos + a * sin
    if style == "interleaved":
        return torch.stack([turned_a, turned_b], dim=-1).flatten(-2)
    return torch.cat([turned_a, turned_b], dim=-1)


def kv_head_of(n_heads: int, kv_heads: int) -> list[int]:
    """GQA pairing: query heads come in kv_heads consecutive groups; group g reads K/V head g."""
    return [h // (n_heads // kv_heads) for h in range(n_heads)]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v per head; causal: query t sees keys 0..t only.
    q is [B, H, T, D]; k, v are [B, KV, S, D] with KV dividing H (the pairing of kv_head_of)."""
    H, KV = q.shape[1], k.shape[1]
    index = kv_head_of(H, KV)
    k, v = k[:, index], v[:, index]
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        t = torch.arange(q.shape[-2])[:, None]
        s = torch.arange(k.shape[-2])[None, :]
        scores = scores.masked_fill(s > t, float("-inf"))
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.einsum("bhts,bhsd->bhtd", weights, v)


def unfuse_qkv(w: Weights, n_heads: int, head_dim: int) -> Weights:
    """A fused qkv matrix's rows are Q's (n_heads x head_dim), then K's, then V's (equal halves)."""
    qkv = w["qkv.weight"]
    q_rows = n_heads * head_dim
    k, v = qkv[q_rows:].tensor_split(2, dim=0)
    return {**w, "q_proj.weight": qkv[:q_rows], "k_proj.weight": k, "v_proj.weight": v}


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last axis, no weight, eps = float32's machine epsilon."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + torch.finfo(torch.float32).eps)


def gated_value(x: torch.Tensor, rows: torch.Tensor, gate: torch.Tensor, kv: int) -> torch.Tensor:
    """What a value embedding adds to V ([B, kv, T, D]): K/V head j gets its slice of the table's
    rows times 2 * sigmoid(gate_j . x[..., :channels]), channels = the gate's input width."""
    logits = linear(x[..., : gate.shape[1]], gate)  # [B, T, kv]
    scale = 2.0 / (1.0 + torch.exp(-logits))
    return heads(rows, kv) * scale.permute(0, 2, 1)[..., None]


def mha(
    x: torch.Tensor,
    w: Weights,
    n_heads: int,
    rope: tuple[float, str] | None,
    causal: bool,
    qk_norm: bool = False,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full-rank Q, K, V (K/V heads from the weight shapes: MHA, GQA or MQA), RoPE on Q and K; with
    qk_bias, its rows 0 and 1 are added to every position's Q and K heads before the rotation; then
    (qk_norm) each head's q and k scaled to unit RMS; ``value``: the rows of a value embedding,
    added to V through the layer's gate (``value_gate.weight``)."""
    head_dim = x.shape[-1] // n_heads
    if "qkv.weight" in w:
        w = unfuse_qkv(w, n_heads, head_dim)
    kv = w["k_proj.weight"].shape[0] // head_dim
    q = heads(linear(x, w["q_proj.weight"]), n_heads)
    k = heads(linear(x, w["k_proj.weight"]), kv)
    v = heads(linear(x, w["v_proj.weight"]), kv)
    if "qk_bias" in w:  # (2, 1, heads, head_dim) -> per head [heads, 1, head_dim]
        q = q + w["qk_bias"][0, 0][:, None, :]
        k = k + w["qk_bias"][1, 0][:, None, :]
    if value is not None:
        v = v + gated_value(x, value, w["value_gate.weight"], kv)
    if rope is not None:  # (base, style)
        q, k = rotate(q, *rope), rotate(k, *rope)
    if qk_norm:
        q, k = unit_rms(q), unit_rms(k)
    return linear(unheads(attend(q, k, v, causal)), w["o_proj.weight"])


def mla(
    x: torch.Tensor, w: Weights, n_heads: int, rope: tuple[float, str] | None, causal: bool
) -> torch.Tensor:
    """Full-rank Q; K and V both up-projected from one latent kv_down(x); RoPE on Q and K."""
    latent = linear(x, w["kv_down.weight"])
    q = heads(linear(x, w["q_proj.weight"]), n_heads)
    k = heads(linear(latent, w["k_up.weight"]), n_heads)
    v = heads(linear(latent, w["v_up.weight"]), n_heads)
    if rope is not None:  # (base, style)
        q, k = rotate(q, *rope), rotate(k, *rope)
    return linear(unheads(attend(q, k, v, causal)), w["o_proj.weight"])


def deepseek_mla(
    x: torch.Tensor,
    w: Weights,
    n_heads: int,
    rope: tuple[float, str] | None,
    causal: bool,
    eps: float = 1e-6,
) -> torch.Tensor:
    """DeepSeek-style latent attention (widths from the weight shapes): q = [q_up_nope c_q, q_up_rope c_q]
    with c_q = norm(q_down x); kv_down x = [c_kv, k_r]; [k_nope, v] = kv_up norm(c_kv) per head; every
    head's key is [k_nope, k_r], k_r one key for all heads; RoPE on the rope parts only. The norms are
    the model's (a LayerNorm when they carry a bias)."""

    def norm(z: torch.Tensor, name: str) -> torch.Tensor:
        if f"{name}.bias" in w:
            return layernorm(z, w[f"{name}.weight"], w[f"{name}.bias"], eps)
        return rmsnorm(z, w[f"{name}.weight"], eps)

    kv_rank = w["kv_norm.weight"].shape[0]
    rope_dim = w["kv_down.weight"].shape[0] - kv_rank
    nope = w["q_up_nope.weight"].shape[0] // n_heads
    c_q = norm(linear(x, w["q_down.weight"]), "q_norm")
    q_nope, q_rope = (
        heads(linear(c_q, w["q_up_nope.weight"]), n_heads),
        heads(linear(c_q, w["q_up_rope.weight"]), n_heads),
    )
    down = linear(x, w["kv_down.weight"])
    c_kv, k_r = down[..., :kv_rank], heads(down[..., kv_rank:], 1)
    assert k_r.shape[-1] == rope_dim
    up = heads(linear(norm(c_kv, "kv_norm"), w["kv_up.weight"]), n_heads)
    k_nope, v = up[..., :nope], up[..., nope:]
    if rope is not None:  # (base, style)
        q_rope, k_r = rotate(q_rope, *rope), rotate(k_r, *rope)
    q = torch.cat([q_nope, q_rope], dim=-1)
    k = torch.cat([k_nope, k_r.expand(-1, n_heads, -1, -1)], dim=-1)
    return linear(unheads(attend(q, k, v, causal)), w["o_proj.weight"])


def cross(
    x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: Weights, n_heads: int, causal: bool
) -> torch.Tensor:
    """Queries from x, K and V the anchor's ([B, KV, T, D]); no RoPE."""
    q = heads(linear(x, w["q_proj.weight"]), n_heads)
    return linear(unheads(attend(q, k, v, causal)), w["o_proj.weight"])


def anchor_mla_kv(x: torch.Tensor, w: Weights, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of every head up-projected from one latent kv_down(x); no RoPE."""
    latent = linear(x, w["kv_down.weight"])
    return heads(linear(latent, w["k_up.weight"]), n_heads), heads(linear(latent, w["v_up.weight"]), n_heads)


def anchor_kv(x: torch.Tensor, w: Weights, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-rank K and V with kv_heads heads (from the weight shapes); no RoPE."""
    kv = w["k_proj.weight"].shape[0] // head_dim
    return heads(linear(x, w["k_proj.weight"]), kv), heads(linear(x, w["v_proj.weight"]), kv)


def lti_gate(h_in: torch.Tensor, block_out: torch.Tensor, a: torch.Tensor, form: str) -> torch.Tensor:
    """cart: sigmoid(a) * h_in + block(h_in); contractive: sigmoid(a) * h_in + (block(h_in) - h_in)."""
    decay = 1.0 / (1.0 + torch.exp(-a))
    return decay * h_in + (block_out if form == "cart" else block_out - h_in)


def decay_gate(h_prev: torch.Tensor, e: torch.Tensor, block_out: torch.Tensor, w: Weights) -> torch.Tensor:
    """A * h_prev + B * e + block(h_in), A = exp(-exp(log_dt + log_A)), the exponent clamped to +-20."""
    exponent = torch.clamp(w["log_dt"] + w["log_A"], -20.0, 20.0)
    return torch.exp(-torch.exp(exponent)) * h_prev + w["B"] * e + block_out


def moe(x: torch.Tensor, w: Weights, top_k: int) -> torch.Tensor:
    """Every token: the top_k experts by router logits + router_bias, weighted by their softmax
    probabilities over all experts renormalised over the chosen; plus every shared expert, unweighted."""
    logits = linear(x, w["router.weight"])
    probs = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    probs = probs / probs.sum(dim=-1, keepdim=True)
    order = torch.argsort(logits + w["router_bias"], dim=-1, descending=True)
    chosen = torch.zeros_like(probs).scatter(-1, order[..., :top_k], 1.0) * probs
    gates = chosen / chosen.sum(dim=-1, keepdim=True)
    experts = sorted({int(k.split(".")[1]) for k in w if k.startswith("experts.")})
    out = sum(gates[..., e : e + 1] * swiglu(x, _sub(w, f"experts.{e}.")) for e in experts)
    shared = sorted({int(k.split(".")[1]) for k in w if k.startswith("shared.")})
    return out + sum((swiglu(x, _sub(w, f"shared.{s}.")) for s in shared), torch.zeros_like(x))


def loop_lora(out: torch.Tensor, r: int, w: Weights) -> torch.Tensor:
    """out + (down(out) * scale[min(r, rows - 1)]) @ B."""
    row = w["scale"][min(r, w["scale"].shape[0] - 1)]
    return out + linear(out, w["down.weight"]) * row @ w["B"]


def act_step(h, spent, halted, w: Weights, threshold: float):
    """p = sigmoid(proj(h)); weight p, or 1 - spent once spent + p reaches the threshold; 0 once halted."""
    p = torch.sigmoid(linear(h, w["proj.weight"]) + w["proj.bias"])[..., 0]
    live = (~halted).float()
    weight = torch.where(spent + p >= threshold, (1 - spent).clamp(min=0), p) * live
    spent = spent + p * live
    return weight[..., None], spent, halted | (spent >= threshold)


def channel_signal(r: int, d: int, fraction: int, base: float) -> torch.Tensor:
    """[d]: with n = d // fraction channels and m = ceil(n / 2) frequencies w_j = base^(-2j / n), the first
    n of [sin(r w_0) .. sin(r w_{m-1}), cos(r w_0) .. cos(r w_{m-1})], then zeros."""
    n = d // fraction
    freqs = [base ** (-2 * j / n) for j in range((n + 1) // 2)]
    values = [math.sin(r * f) for f in freqs] + [math.cos(r * f) for f in freqs]
    return torch.tensor(values[:n] + [0.0] * (d - n), dtype=torch.float32)


def residual_gate(h_in: torch.Tensor, block_out: torch.Tensor) -> torch.Tensor:
    """h_in + block(h_in), the block keeping its own residual."""
    return h_in + block_out


def hyper_mix(states: list[torch.Tensor], raw: torch.Tensor) -> torch.Tensor:
    """sum_i softmax(raw)_i * states[i], states[0] the newest."""
    p = torch.exp(raw - raw.max())
    p = p / p.sum()
    return sum(p[i] * s for i, s in enumerate(states))


def concat_inject(h: torch.Tensor, e: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
    """adapter [h, e]: the state's channels first, then e's, through one Linear(2d -> d)."""
    d = h.shape[-1]
    return linear(h, adapter[:, :d]) + linear(e, adapter[:, d:])


def diagonal_inject(h: torch.Tensor, e: torch.Tensor, w: Weights) -> torch.Tensor:
    """exp(-s * exp(A_log)) * h + s * (e B^T), with the step s = log(1 + exp(dt_bias))."""
    step = torch.log1p(torch.exp(w["dt_bias"]))
    return torch.exp(-step * torch.exp(w["A_log"])) * h + step * linear(e, w["B"])


def loop_embedding(r: int, dim: int, proj: torch.Tensor) -> torch.Tensor:
    """proj(table[r]), table[r, 2i] = sin(r / 10000^(2i/dim)), table[r, 2i + 1] = cos(the same)."""
    row = torch.empty(dim, dtype=torch.float64)
    for i in range(dim // 2):
        angle = r / 10000.0 ** (2 * i / dim)
        row[2 * i], row[2 * i + 1] = math.sin(angle), math.cos(angle)
    return linear(row.float(), proj)


# ----------------------------------------------------------------------------- a whole model

ATTENTION_DEFAULTS = {
    "rope": True,
    "rope_base": 10000.0,
    "rope_style": "half",
    "causal": True,
    "qk_norm": False,
}


def initial_state(e: torch.Tensor, init: dict, max_seq_len: int) -> torch.Tensor:
    """h0 at evaluation: e, zeros, or rows 0..T-1 of a [max_seq_len, d] table drawn on the CPU
    from the seed (randn, then overwritten by TruncNormal(0, std, +-3 std)), times the scale."""
    kind = init.get("kind", "prelude")
    if kind == "prelude":
        return e
    if kind == "zeros":
        return torch.zeros_like(e)
    d = e.shape[-1]
    std = init.get("std") or math.sqrt(2 / (5 * d))
    scale = math.sqrt(d) if init.get("scale") == "sqrt_d" else init.get("scale", 1.0)
    g = torch.Generator().manual_seed(init["seed"])
    table = torch.randn(max_seq_len, d, generator=g)
    torch.nn.init.trunc_normal_(table, 0.0, std, -3 * std, 3 * std, generator=g)
    return (table * scale)[: e.shape[1]].expand_as(e)


def _sub(sd: Weights, prefix: str) -> Weights:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


class Reference:
    """A whole model from its spec data and a generated model's weights (its state_dict)."""

    def __init__(self, spec: dict[str, Any], sd: Weights):
        m = spec["model"]
        self.sd = {k: v.detach().float() for k, v in sd.items()}
        self.d = m["d_model"]
        self.head_dim = m.get("head_dim", 64)
        self.n_heads = self.d // self.head_dim
        self.ffn_kind = (m.get("ffn") or {}).get("kind", "swiglu")
        self.ffn_scale = (m.get("ffn") or {}).get("scale", 1.0)
        norm = m.get("norm") or {}
        self.norm_kind, self.eps = norm.get("kind", "rmsnorm"), norm.get("eps", 1e-6)
        self.placement = norm.get("placement", "pre")
        scale = m.get("embedding_scale", 1.0)
        self.embedding_scale = math.sqrt(self.d) if scale == "sqrt_d" else scale
        self.tied = m.get("tie_embeddings", True)
        self.blocks = spec["blocks"]
        self.model = m

    def norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        w = _sub(self.sd, prefix)
        if self.norm_kind == "rmsnorm":
            return rmsnorm(x, w["weight"], self.eps)
        return layernorm(x, w["weight"], w["bias"], self.eps)

    def ffn(self, x: torch.Tensor, prefix: str, moe_spec: dict | None = None) -> torch.Tensor:
        w = _sub(self.sd, prefix)
        if moe_spec is not None:
            return moe(x, w, moe_spec["top_k"])
        if self.ffn_kind == "relu2":
            return relu2_mlp(x, w, self.ffn_scale)
        return swiglu(x, w) if self.ffn_kind == "swiglu" else gelu_mlp(x, w)

    def attention(self, x: torch.Tensor, prefix: str, attn: dict, kv=None, value=None) -> torch.Tensor:
        a = {**ATTENTION_DEFAULTS, **attn}
        w = _sub(self.sd, prefix)
        if a["kind"] == "cross":
            return cross(x, *kv, w, self.n_heads, a["causal"])
        rope = (a["rope_base"], a["rope_style"]) if a["rope"] else None
        if a["kind"] == "deepseek_mla":
            return deepseek_mla(x, w, self.n_heads, rope, a["causal"], self.eps)
        if a["kind"] == "mha":
            return mha(x, w, self.n_heads, rope, a["causal"], a["qk_norm"], value)
        return mla(x, w, self.n_heads, rope, a["causal"])

    def layer(self, x: torch.Tensor, prefix: str, stage: dict, kv=None, value=None) -> torch.Tensor:
        """Pre-norm: x + attn(norm(x)), then x + ffn(norm(x)); sandwich: each sum normalised again.
        The FFN is the stage's own (the core's mixture of experts) when it has one."""
        attn = self.attention(
            self.norm(x, f"{prefix}attn_norm."), f"{prefix}attn.", stage["attention"], kv, value
        )
        x = x + attn
        if stage.get("norm_placement", self.placement) == "sandwich":
            x = self.norm(x, f"{prefix}attn_out_norm.")
        x = x + self.ffn(self.norm(x, f"{prefix}ffn_norm."), f"{prefix}ffn.", stage.get("ffn"))
        if stage.get("norm_placement", self.placement) == "sandwich":
            x = self.norm(x, f"{prefix}ffn_out_norm.")
        return x

    def value(self, idx: torch.Tensor, stage: str, i: int) -> torch.Tensor | None:
        """The value-embedding rows of layer i of a stage: table k of the stage for its k-th listed
        layer (in increasing order), None for a layer without a table."""
        listed = sorted((self.blocks[stage].get("value_embedding") or {}).get("layers", []))
        if i not in listed:
            return None
        return self.sd[f"{stage}_values.tables.{listed.index(i)}.weight"][idx]

    def anchor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = _sub(self.sd, "anchor.")
        if self.blocks["anchor"].get("kind", "mla_kv") == "mla_kv":
            return anchor_mla_kv(x, w, self.n_heads)
        return anchor_kv(x, w, self.head_dim)

    def core_block(self, x: torch.Tensor, r: int, kv, values=None) -> torch.Tensor:
        """One loop of the core: its layers in a row, each with its residuals."""
        core = self.blocks["core"]
        prefix = "core." if core.get("shared", True) else f"core.{r}."
        n = core.get("layers", 1)
        values = values or [None] * n
        for j in range(n):
            x = self.layer(x, prefix if n == 1 else f"{prefix}layers.{j}.", core, kv, values[j])
        return x

    def loop_step(self, h_in: torch.Tensor, r: int, kv, values=None, h_prev=None, e=None) -> torch.Tensor:
        gate = self.blocks["core"].get("gate")
        out = self.core_block(h_in, r, kv, values)
        if "lora" in self.blocks["core"]:
            out = loop_lora(out, r, _sub(self.sd, "lora."))
        if gate is None:
            return out
        if gate["kind"] == "residual":
            return residual_gate(h_in, out)
        if gate["kind"] == "decay":
            return decay_gate(h_prev, e, out, _sub(self.sd, "gate."))
        return lti_gate(h_in, out, self.sd["gate.a"], gate.get("form", "cart"))

    def logits(self, idx: torch.Tensor, loops: int | None = None) -> torch.Tensor:
        x = self.sd["embedding.weight"][idx] * self.embedding_scale
        embedded = x
        for name in ("stack", "prelude"):
            block = self.blocks.get(name)
            for i in range(block["layers"] if block else 0):
                x = self.layer(x, f"{name}.{i}.", block, value=self.value(idx, name, i))
            x = self.norm(x, f"{name}_norm.") if block and block.get("output_norm") else x
        core = self.blocks.get("core")
        if core is not None:
            values = [self.value(idx, "core", j) for j in range(core.get("layers", 1))]
            x = self.loop(x, embedded, core, core["loops"] if loops is None else loops, values)
            if core.get("out_norm"):
                x = self.norm(x, "core_out_norm.")
            if core.get("readout") is not None:  # linear: C(h)
                x = linear(x, self.sd["readout.weight"])
        coda = self.blocks.get("coda")
        for i in range(coda["layers"] if coda else 0):
            x = self.layer(x, f"coda.{i}.", coda, value=self.value(idx, "coda", i))
        x = self.norm(x, "coda_norm.") if coda and coda.get("output_norm") else x
        x = self.norm(x, "norm.")
        return linear(x, self.sd["embedding.weight" if self.tied else "head.weight"])

    def loop(self, e: torch.Tensor, embedded: torch.Tensor, core: dict, loops: int, values) -> torch.Tensor:
        anchor = self.blocks.get("anchor")
        every_loop = anchor is not None and anchor.get("recompute", "never") == "every_loop"
        kv = None
        if anchor is not None and not every_loop:
            kv = self.anchor(embedded if anchor.get("from", "prelude") == "embedding" else e)
        mix, table = core.get("state_mix"), core.get("loop_embedding")
        h0 = initial_state(e, core.get("init_state") or {}, self.model["max_seq_len"])
        states = [h0] * mix.get("taps", 3) if mix is not None else [h0]
        halt = core.get("halt")
        h_out, spent = torch.zeros_like(e), torch.zeros(e.shape[:-1])
        halted = torch.zeros(e.shape[:-1], dtype=torch.bool)
        for r in range(loops):
            h_in = hyper_mix(states, self.sd["state_mix.weights"]) if mix is not None else states[0]
            if table is not None and table["kind"] == "channels":
                h_in = h_in + channel_signal(r, self.d, table.get("fraction", 8), table.get("base", 10000.0))
            elif table is not None:
                h_in = h_in + loop_embedding(r, table.get("dim", 32), self.sd["loop_embedding.proj.weight"])
            inject = (core.get("inject") or {}).get("kind")
            if inject == "add":
                h_in = h_in + e
            elif inject == "add_norm":
                norm = core["inject"].get("norm") or {}
                w, eps = _sub(self.sd, "inject."), norm.get("eps", 1e-6)
                if norm.get("kind", "rmsnorm") == "rmsnorm":
                    h_in = rmsnorm(h_in + e, w["weight"], eps)
                else:
                    h_in = layernorm(h_in + e, w["weight"], w["bias"], eps)
            elif inject == "concat":
                h_in = concat_inject(h_in, e, self.sd["inject.adapter.weight"])
            elif inject == "diagonal":
                h_in = diagonal_inject(h_in, e, _sub(self.sd, "inject."))
            if every_loop:
                kv = self.anchor(h_in)
            h = self.loop_step(h_in, r, kv, values, states[0], e)
            states = [h, *states[:-1]]
            if halt is not None:
                weight, spent, halted = act_step(
                    h, spent, halted, _sub(self.sd, "halt."), halt.get("threshold", 0.99)
                )
                h_out = h_out + weight * h
        return h_out if halt is not None else states[0]


def model_logits(
    spec: dict[str, Any], sd: Weights, idx: torch.Tensor, loops: int | None = None
) -> torch.Tensor:
    """The logits of the model ``spec`` describes, with the weights ``sd``."""
    with torch.no_grad():
        return Reference(spec, sd).logits(idx, loops)
