"""Hand-written PyTorch CART and dense models, independent of cartspec's generator.

They are the yardstick for ``bench/throughput.py``: the same architecture written the way a
person would write it (fused QKV / KV projections, one module per layer), so the generated
code's speed can be compared with a careful hand-written baseline. Sizes come from a plain
dict, not from cartspec.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(d: int, multiple_of: int = 256) -> int:
    return math.ceil(int(8 * d / 3) / multiple_of) * multiple_of


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope_tables(head_dim: int, T: int, base: float = 10000.0):
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    f = torch.outer(torch.arange(T).float(), inv)
    f = torch.cat((f, f), -1)
    return f.cos(), f.sin()


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


class FFN(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(d, 2 * hidden, bias=False)  # gate and up fused
        self.w3 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        g, u = self.w12(x).chunk(2, -1)
        return self.w3(F.silu(g) * u)


class Attention(nn.Module):
    """Self-attention; ``latent`` > 0 gives CART's MLA (K, V from one latent), else full MHA."""

    def __init__(self, d: int, heads: int, latent: int = 0):
        super().__init__()
        self.h, self.latent = heads, latent
        if latent:
            self.q = nn.Linear(d, d, bias=False)
            self.down = nn.Linear(d, latent, bias=False)
            self.kv = nn.Linear(latent, 2 * d, bias=False)
        else:
            self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, d = x.shape
        if self.latent:
            q = self.q(x)
            k, v = self.kv(self.down(x)).chunk(2, -1)
        else:
            q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = (t.view(B, T, self.h, -1).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q, cos[:T], sin[:T]), rope(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int, latent: int = 0):
        super().__init__()
        self.n1, self.attn, self.n2, self.ffn = (
            RMSNorm(d),
            Attention(d, heads, latent),
            RMSNorm(d),
            FFN(d, hidden),
        )

    def forward(self, x, cos, sin):
        x = x + self.attn(self.n1(x), cos, sin)
        return x + self.ffn(self.n2(x))


class Core(nn.Module):
    """Cross-attention to the frozen anchor K, V (causal, no RoPE), then the FFN."""

    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.h = heads
        self.n1, self.q, self.o = RMSNorm(d), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.n2, self.ffn = RMSNorm(d), FFN(d, hidden)

    def forward(self, x, k, v):
        B, T, d = x.shape
        q = self.q(self.n1(x)).view(B, T, self.h, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = x + self.o(y.transpose(1, 2).reshape(B, T, d))
        return h + self.ffn(self.n2(h))


class HandCART(nn.Module):
    def __init__(
        self,
        vocab: int,
        d: int,
        head_dim: int,
        prelude: int,
        loops: int,
        coda: int,
        T: int,
        multiple_of: int = 256,
    ):
        super().__init__()
        heads, hidden, latent = d // head_dim, swiglu_hidden(d, multiple_of), d // 4
        self.loops, self.h = loops, heads
        self.emb = nn.Embedding(vocab, d)
        self.prelude = nn.ModuleList(Block(d, heads, hidden, latent) for _ in range(prelude))
        self.anchor_down, self.anchor_kv = (
            nn.Linear(d, latent, bias=False),
            nn.Linear(latent, 2 * d, bias=False),
        )
        self.core = Core(d, heads, hidden)
        self.a = nn.Parameter(torch.full((d,), math.log(9.0)))
        self.w = nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))
        pos = torch.arange(16).float()[:, None]
        freq = torch.exp(torch.arange(0, 32, 2).float() * (-math.log(1e4) / 32))
        pe = torch.zeros(16, 32)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self.register_buffer("pe", pe, persistent=False)
        self.lie = nn.Linear(32, d, bias=False)
        self.coda = nn.ModuleList(Block(d, heads, hidden, latent) for _ in range(coda))
        self.norm = RMSNorm(d)
        cos, sin = rope_tables(head_dim, T)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def blocks(self) -> list[nn.Module]:
        """The layers and the core, each once: what a per-block torch.compile compiles."""
        return [*self.prelude, self.core, *self.coda]

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.emb(idx)
        for blk in self.prelude:
            x = blk(x, self.cos, self.sin)
        k, v = self.anchor_kv(self.anchor_down(x)).chunk(2, -1)
        k, v = (t.view(B, T, self.h, -1).transpose(1, 2) for t in (k, v))
        buf = [x, x, x]
        gate = torch.sigmoid(self.a)
        for r in range(self.loops):
            w = torch.softmax(self.w, 0)
            h_in = w[0] * buf[0] + w[1] * buf[1] + w[2] * buf[2] + self.lie(self.pe[r])
            buf = [gate * h_in + self.core(h_in, k, v), buf[0], buf[1]]
        x = buf[0]
        for blk in self.coda:
            x = blk(x, self.cos, self.sin)
        logits = F.linear(self.norm(x), self.emb.weight)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


class HandDense(nn.Module):
    def __init__(self, vocab: int, d: int, head_dim: int, layers: int, T: int, multiple_of: int = 256):
        super().__init__()
        heads, hidden = d // head_dim, swiglu_hidden(d, multiple_of)
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(d)
        cos, sin = rope_tables(head_dim, T)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def blocks(self) -> list[nn.Module]:
        """The layers: what a per-block torch.compile compiles."""
        return list(self.layers)

    def forward(self, idx, targets):
        x = self.emb(idx)
        for blk in self.layers:
            x = blk(x, self.cos, self.sin)
        logits = F.linear(self.norm(x), self.emb.weight)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
