"""Random specs for the property tests and the fuzz benchmark.

- ``valid_spec``: a valid spec over the whole language (dense stacks; prelude/anchor/core/coda
  mixes; mha/mla/cross attention; gates, state mixes, loop embeddings; sharing groups), as plain
  data, at sizes so small that every model builds and trains in milliseconds.
- ``spec_files``: the same spec written as a base file, a child that ``extends:`` it and ``--set``
  overrides, which must load back into exactly that spec.
- ``invalid_case``: a valid spec with one mutation that makes it certainly invalid (wrong type,
  out-of-range size, unknown key, missing key, dangling anchor, mismatched sharing group, extends
  cycle, bad ``--set``, broken YAML ...), as the files a user would pass to the CLI.
- ``random_case``: a mutation that may go either way (the fuzz benchmark's diet).
- ``counts``: stored and effective parameters computed from the plain data by a formula
  independent of the compiler, as an oracle.

Every generator takes a :class:`Chooser`, so hypothesis (shrinking, derandomized CI runs) and the
benchmark (``random.Random``, thousands of specs a second) draw from one description of the
language. Options are listed simplest first: hypothesis shrinks towards the first.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from hypothesis import strategies as st

T = TypeVar("T")

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"


def examples(ci: int, dev: int) -> int:
    """A test's example budget under the current hypothesis profile (conftest.py)."""
    return ci if CI else dev


# ----------------------------------------------------------------------------- choosers


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def boolean(self) -> bool: ...
    def text(self, max_size: int) -> str: ...


class DrawChooser:
    """Choices drawn through hypothesis (inside ``st.composite``)."""

    def __init__(self, draw: Callable):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(list(options)))

    def boolean(self) -> bool:
        return self.draw(st.booleans())

    def text(self, max_size: int) -> str:
        return self.draw(st.text(max_size=max_size))


NASTY_CHARS = "aZ09_ .:-'\"\\\n\r\t\x00{}[]#&*!|>%@`$\u00e9\u2028\U0001f600"


class RandomChooser:
    """Choices from ``random.Random`` (the fuzz benchmark)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(list(options))

    def boolean(self) -> bool:
        return self.rng.random() < 0.5

    def text(self, max_size: int) -> str:
        return "".join(self.rng.choice(NASTY_CHARS) for _ in range(self.rng.randint(0, max_size)))


# ----------------------------------------------------------------------------- valid specs

# Names that capitalise into a name the generated module already uses (Config, Rotary, F ...).
TRICKY_NAMES = (
    "config",
    "rotary",
    "layer",
    "core_block",
    "core_layer",
    "prelude_layer",
    "coda_layer",
    "state_mix",
    "loop_embedding",
    "self_attention",
    "latent_self_attention",
    "anchor_cross_attention",
    "grouped_query_attention",
    "f",
    "model",
    "swi_g_l_u",
    "m_l_p",
    "r_m_s_norm",
    "l_t_i_gate",
    "anchor_k_v",
    "self_attention_no_rope",
    "grouped_query_attention_bidirectional",
)
PLAIN_NAMES = ("m", "tiny", "cart_x", "dense_a1", "loop_2", "z9", "a_b_c")


def _name(c: Chooser) -> str:
    pool = c.choice(["plain", "plain", "tricky"])
    return c.choice(PLAIN_NAMES if pool == "plain" else TRICKY_NAMES)


def _maybe(c: Chooser, out: dict, key: str, value: Callable[[], Any]) -> None:
    """Set ``out[key]`` (drawn by ``value``) or leave the key out so the default applies."""
    if c.boolean():
        out[key] = value()


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _self_attention(c: Chooser, d: int, heads: int, rope: dict[str, Any]) -> dict:
    kind = c.choice(["mha", "mla", "deepseek_mla"])
    a: dict[str, Any] = {"kind": kind}
    if kind == "mha":
        _maybe(c, a, "kv_heads", lambda: c.choice(_divisors(heads)))
        _maybe(c, a, "qk_norm", c.boolean)
    elif kind == "mla":
        _maybe(c, a, "kv_latent", lambda: c.integer(1, d))
    else:  # RoPE rotates head_dim channels in every block: they share one table
        # latents of 2 channels at least: a layernorm makes a one-channel latent constant (its bias)
        a.update(q_rank=c.integer(2, d), kv_rank=c.integer(2, d), nope_dim=c.integer(1, 8))
        a.update(rope_dim=d // heads, v_dim=c.integer(1, 8))
    _maybe(c, a, "rope", c.boolean)
    _maybe(c, a, "causal", c.boolean)
    a.update(rope)  # one base and style for every block: they share one table
    if kind == "mha":
        _maybe(c, a, "fused_qkv", c.boolean)
        # Huginn's qk_bias: one row per head; without RoPE the K half only shifts every score of a
        # query alike, which softmax ignores (no gradient), so it is drawn with RoPE
        if a.get("kv_heads", heads) == heads and a.get("rope", True):
            _maybe(c, a, "qk_bias", c.boolean)
    return a


PLACEMENTS = ["pre", "sandwich"]


def _stack(c: Chooser, d: int, heads: int, rope: dict[str, Any], most: int = 3) -> dict:
    stack = {"layers": c.integer(1, most), "attention": _self_attention(c, d, heads, rope)}
    _maybe(c, stack, "norm_placement", lambda: c.choice(PLACEMENTS))
    _maybe_values(c, stack, d)
    _maybe(c, stack, "output_norm", c.boolean)
    return stack


def _maybe_values(c: Chooser, stage: dict, d: int) -> None:
    """Value embeddings on a non-empty subset of an mha stage's layers, now and then."""
    if stage["attention"]["kind"] != "mha" or not c.boolean():
        return
    n = stage.get("layers", 1)
    layers = [i for i in range(n) if c.boolean()] or [n - 1]
    values: dict[str, Any] = {"kind": "gated", "layers": c.choice([layers, layers[::-1]])}
    if d < 32 or c.boolean():  # the default 32 channels need d_model >= 32
        values["gate_channels"] = c.choice([1, 4, 8, d])
    stage["value_embedding"] = values


def gated(blocks: dict, block: str, i: int) -> bool:
    """Layer i of a stage (or of the core) has a value embedding."""
    return i in (blocks.get(block, {}).get("value_embedding") or {}).get("layers", [])


def gate_width(blocks: dict, block: str, i: int) -> int | None:
    """The channels layer i's value-embedding gate reads, or None without a gate."""
    values = blocks.get(block, {}).get("value_embedding") or {}
    return values.get("gate_channels", 32) if gated(blocks, block, i) else None


def valid_spec(c: Chooser) -> dict:
    """A valid spec as plain data (no None values: an absent key is how a default is asked for)."""
    head_dim = c.choice([8, 4, 16, 32])
    heads = c.choice([n for n in (1, 2, 4, 8) if 16 <= head_dim * n <= 64])
    d = head_dim * heads
    model: dict[str, Any] = {
        "vocab_size": c.integer(17, 300),
        "d_model": d,
        "max_seq_len": c.integer(8, 32),
        "head_dim": head_dim,
    }
    ffn: dict[str, Any] = {"kind": c.choice(["swiglu", "gelu", "relu2"])}
    if c.boolean():
        ffn["hidden"] = c.integer(8, 96)
    elif ffn["kind"] == "swiglu":
        _maybe(c, ffn, "multiple_of", lambda: c.choice([16, 8, 32, 64]))
    if ffn["kind"] == "swiglu":
        _maybe(c, ffn, "fused", c.boolean)
    if ffn["kind"] == "relu2":
        _maybe(c, ffn, "scale", lambda: c.choice([0.5, 1.0, 2.0]))
    model["ffn"] = ffn
    norm: dict[str, Any] = {"kind": c.choice(["rmsnorm", "layernorm"])}
    _maybe(c, norm, "eps", lambda: c.choice([1e-6, 1e-5, 0.001]))
    _maybe(c, norm, "placement", lambda: c.choice(PLACEMENTS))
    model["norm"] = norm
    _maybe(c, model, "tie_embeddings", c.boolean)
    _maybe(c, model, "init_std", lambda: c.choice([0.02, 0.1, 0.5]))
    _maybe(c, model, "embedding_scale", lambda: c.choice(["sqrt_d", 0.5, 2.0]))

    rope: dict[str, Any] = {}
    _maybe(c, rope, "rope_base", lambda: c.choice([10000.0, 500.0]))
    _maybe(c, rope, "rope_style", lambda: c.choice(["half", "interleaved"]))
    blocks: dict[str, Any] = {}
    if c.choice(["looped", "dense"]) == "dense":
        blocks["stack"] = _stack(c, d, heads, rope)
    else:
        has = {b: c.boolean() for b in ("prelude", "core", "coda")}
        if not any(has.values()):
            has["core"] = True
        if has["prelude"]:
            blocks["prelude"] = _stack(c, d, heads, rope)
        if has["core"]:
            loops = c.integer(1, 4)
            core: dict[str, Any] = {"loops": loops}
            shared = c.choice(["default", "shared", "unshared"])
            if shared != "default":
                core["shared"] = shared == "shared"
            _maybe(c, core, "layers", lambda: c.integer(1, 2))
            if c.choice(["cross", "self"]) == "cross":
                core["attention"] = {"kind": "cross"}
                _maybe(c, core["attention"], "to", lambda: "anchor")
                _maybe(c, core["attention"], "causal", c.boolean)
                anchor: dict[str, Any] = {}
                if has["prelude"]:
                    _maybe(c, anchor, "from", lambda: c.choice(["prelude", "embedding"]))
                else:
                    anchor["from"] = "embedding"
                kind = c.choice(["mla_kv", "kv"])
                anchor["kind"] = kind
                if kind == "mla_kv":
                    _maybe(c, anchor, "kv_latent", lambda: c.integer(1, d))
                else:
                    _maybe(c, anchor, "kv_heads", lambda: c.choice(_divisors(heads)))
                recompute = c.choice(["default", "every_loop", "never"])
                if recompute != "default":
                    anchor["recompute"] = recompute
                blocks["anchor"] = anchor
            else:
                core["attention"] = _self_attention(c, d, heads, rope)
                _maybe_values(c, core, d)
            gate = c.choice(["none", "lti", "residual", "decay"])
            if gate == "lti":
                core["gate"] = {"kind": "lti"}
                _maybe(c, core["gate"], "init", lambda: c.choice([0.9, 0.5, 0.1, 0.99]))
                _maybe(c, core["gate"], "form", lambda: c.choice(["cart", "contractive"]))
            elif gate == "residual":
                core["gate"] = {"kind": "residual"}
            elif gate == "decay":
                core["gate"] = {"kind": "decay"}
                _maybe(c, core["gate"], "b_init", lambda: c.choice([0.1, -0.5, 1.0]))
            if core.get("gate", {}).get("form") == "contractive":  # needs an update delta: pre-norm
                if norm.get("placement") == "sandwich" or c.boolean():
                    core["norm_placement"] = "pre"
            else:
                _maybe(c, core, "norm_placement", lambda: c.choice(PLACEMENTS))
            _maybe(c, core, "out_norm", c.boolean)
            if c.boolean():
                experts = c.integer(2, 4)
                moe: dict[str, Any] = {"kind": "moe", "experts": experts, "top_k": c.integer(1, experts)}
                moe["hidden"] = c.integer(1, 16)
                _maybe(c, moe, "shared", lambda: c.integer(0, 2))
                _maybe(c, moe, "shared_hidden", lambda: c.integer(1, 16))
                core["ffn"] = moe
            if c.boolean():
                core["lora"] = {
                    "kind": "per_loop",
                    "rank": c.integer(1, 4),
                    "max_loops": c.integer(1, loops + 1),
                }
            if c.boolean():
                core["halt"] = {"kind": "act"}
                _maybe(c, core["halt"], "threshold", lambda: c.choice([0.99, 0.5, 1.0]))
            if c.boolean():
                mix: dict[str, Any] = {"kind": "hyper"}
                taps = c.integer(1, 4)
                if taps != 3 or c.boolean():
                    mix["taps"] = taps
                _maybe(c, mix, "init", lambda: [c.choice([1.0, 0.0, -0.5, 2.0]) for _ in range(taps)])
                core["state_mix"] = mix
            signal = c.choice(["none", "sinusoidal", "channels"])
            if signal == "sinusoidal":
                le: dict[str, Any] = {"kind": "sinusoidal"}
                _maybe(c, le, "dim", lambda: c.choice([2, 4, 8, 16, 32]))
                _maybe(c, le, "max_loops", lambda: c.integer(loops, loops + 4))
                core["loop_embedding"] = le
            elif signal == "channels":
                le = {"kind": "channels"}
                _maybe(c, le, "fraction", lambda: c.integer(1, 9))
                _maybe(c, le, "base", lambda: c.choice([10000.0, 50.0]))
                core["loop_embedding"] = le
            start = c.choice(["default", "prelude", "zeros", "trunc_normal"])
            if start == "trunc_normal":  # seeded: evaluation must be deterministic to be compared
                init: dict[str, Any] = {"kind": start, "seed": c.integer(0, 9)}
                _maybe(c, init, "std", lambda: c.choice([0.02, 0.5]))
                _maybe(c, init, "scale", lambda: c.choice([2.0, "sqrt_d"]))
                core["init_state"] = init
            elif start != "default":
                core["init_state"] = {"kind": start}
            # a loop must read the prelude output: a zero start queries the anchor with zeros (one loop
            # would attend uniformly and K gets no gradient), an anchor recomputed from the loop input
            # never sees the tokens, and an anchor read from the embedding leaves the prelude unused
            anchor = blocks.get("anchor", {})
            frozen = anchor.get("recompute", "never") == "never" and anchor.get("from") != "embedding"
            cross = core["attention"]["kind"] == "cross" and frozen and start != "zeros"
            reads_input = cross or start in ("default", "prelude")
            if c.boolean() or not reads_input:  # a loop must read the tokens somehow
                core["inject"] = {"kind": c.choice(["add", "add_norm", "concat", "diagonal"])}
                if core["inject"]["kind"] == "add_norm" and c.boolean():
                    core["inject"]["norm"] = {"kind": c.choice(["rmsnorm", "layernorm"]), "eps": 1e-5}
            _maybe(c, core, "checkpoint", c.boolean)
            _maybe(c, core, "readout", lambda: {"kind": "linear"})
            blocks["core"] = core
        if has["coda"]:
            blocks["coda"] = _stack(c, d, heads, rope)
            if has["prelude"] and c.boolean():  # same structure, so prelude and coda may share
                blocks["coda"]["attention"] = copy.deepcopy(blocks["prelude"]["attention"])
                blocks["coda"].pop("norm_placement", None)
                if "norm_placement" in blocks["prelude"]:
                    blocks["coda"]["norm_placement"] = blocks["prelude"]["norm_placement"]
                if blocks["coda"]["attention"]["kind"] != "mha":
                    blocks["coda"].pop("value_embedding", None)

    spec: dict[str, Any] = {"name": _name(c)}
    _maybe(c, spec, "description", lambda: c.choice(["a tiny model", "x: 'y' # z"]))
    spec["model"] = model
    spec["blocks"] = blocks
    share = _share_groups(c, blocks)
    if share:
        spec["share"] = share
    if c.boolean():
        t = model["max_seq_len"]
        spec["train"] = {
            "seq_len": c.integer(1, t),
            "micro_batch": c.integer(1, 4),
            "steps": c.integer(1, 10),
        }
    return spec


def _share_groups(c: Chooser, blocks: dict) -> list[dict]:
    """Sharing groups over structurally identical modules, each module in at most one group."""
    candidates: list[list[str]] = []
    for block in ("stack", "prelude", "coda"):
        n = blocks.get(block, {}).get("layers", 0)
        if n >= 2:
            candidates.append(c.choice([[f"{block}.*"], [f"{block}.0", f"{block}.{n - 1}"]]))
    core = blocks.get("core")
    if core is not None and core.get("shared") is False and core["loops"] >= 2:
        candidates.append(c.choice([["core.loop[0]", "core.loop[1]"], ["core.*"]]))
    prelude, coda = blocks.get("prelude"), blocks.get("coda")
    same = prelude and coda and prelude["attention"] == coda["attention"]
    if same and prelude.get("norm_placement") == coda.get("norm_placement"):
        candidates.append(["prelude.0", "coda.0"])
    if core is not None and core.get("out_norm"):
        candidates.append(c.choice([["core_out_norm", "norm"], ["norm", "core_out_norm"]]))
    groups: list[dict] = []
    claimed: set[str] = set()
    for members in candidates:
        blocks_used = {m.split(".")[0] for m in members}
        if blocks_used & claimed or not c.boolean() or not _same_gates(blocks, members):
            continue
        claimed |= blocks_used
        groups.append({"name": f"group_{len(groups)}", "members": members})
    return groups


def _same_gates(blocks: dict, members: list[str]) -> bool:
    """Layer members are identical only if none of them has a value-embedding gate, or all have
    gates of one width."""
    flags = set()
    for member in members:
        block, _, index = member.partition(".")  # the final and out norms have no index
        if block in ("stack", "prelude", "coda"):
            n = blocks[block]["layers"]
            flags |= {gate_width(blocks, block, i) for i in (range(n) if index == "*" else [int(index)])}
    return len(flags) <= 1


# ----------------------------------------------------------------------------- the oracle


def counts(spec: dict) -> tuple[int, int]:
    """(stored, effective) parameters of a valid spec, from the definitions in docs/accounting.md alone."""
    m, b = spec["model"], spec["blocks"]
    d, V, hd = m["d_model"], m["vocab_size"], m.get("head_dim", 64)
    heads = d // hd
    norm = d * (2 if m.get("norm", {}).get("kind") == "layernorm" else 1)
    placement = m.get("norm", {}).get("placement", "pre")
    ffn = m.get("ffn", {})
    kind = ffn.get("kind", "swiglu")
    if "hidden" in ffn:
        hidden = ffn["hidden"]
    elif kind in ("gelu", "relu2"):
        hidden = 4 * d
    else:
        mo = ffn.get("multiple_of", 256)
        hidden = math.ceil(int(8 * d / 3) / mo) * mo
    ffn_p = (3 if kind == "swiglu" else 2) * d * hidden

    def attention(a: dict) -> int:
        if a["kind"] == "cross":
            return 2 * d * d
        if a["kind"] == "deepseek_mla":  # projections, and a norm on each latent
            q, kv, nope, rope, v = (a[k] for k in ("q_rank", "kv_rank", "nope_dim", "rope_dim", "v_dim"))
            projections = (
                d * q + q * heads * (nope + rope) + d * (kv + rope) + kv * heads * (nope + v) + heads * v * d
            )
            return projections + (q + kv) * norm // d
        if a["kind"] == "mla":
            return 2 * d * d + 3 * d * a.get("kv_latent", d // 4)
        bias = 2 * d if a.get("qk_bias") else 0  # (2, 1, heads, head_dim)
        return 2 * d * d + 2 * d * a.get("kv_heads", heads) * hd + bias

    def layer(stage: dict) -> int:  # the core's own FFN (a mixture of experts) when it has one
        norms = 4 if stage.get("norm_placement", placement) == "sandwich" else 2
        moe = stage.get("ffn")
        return attention(stage["attention"]) + (moe_params(moe) if moe else ffn_p) + norms * norm

    def moe_params(moe: dict) -> int:
        shared = moe.get("shared", 0) * 3 * d * moe.get("shared_hidden", moe["hidden"] * moe["top_k"])
        return d * moe["experts"] + moe["experts"] * 3 * d * moe["hidden"] + shared

    def gate(block: str, i: int) -> int:  # a value embedding's gate: channels -> K/V heads
        values = b[block].get("value_embedding")
        kv = b[block]["attention"].get("kv_heads", heads)
        return values.get("gate_channels", 32) * kv if gated(b, block, i) else 0

    modules: dict[str, tuple[int, int]] = {"embedding": (V * d, 1), "norm": (norm, 1)}
    if not m.get("tie_embeddings", True):
        modules["head"] = (V * d, 1)
    for block in ("stack", "prelude", "core", "coda"):
        values = b.get(block, {}).get("value_embedding")
        if values:  # one vocabulary-sized table of K/V width per listed layer, looked up once
            kv = b[block]["attention"].get("kv_heads", heads)
            modules[f"{block}_values"] = (len(values["layers"]) * V * kv * hd, 1)
    for block in ("stack", "prelude", "coda"):
        if block in b:
            for i in range(b[block]["layers"]):
                modules[f"{block}.{i}"] = (layer(b[block]) + gate(block, i), 1)
            if b[block].get("output_norm"):
                modules[f"{block}_norm"] = (norm, 1)
    core = b.get("core")
    loops = core["loops"] if core else 0
    if "anchor" in b:
        a = b["anchor"]
        size = (
            3 * d * a.get("kv_latent", d // 4)
            if a.get("kind", "mla_kv") == "mla_kv"
            else 2 * d * a.get("kv_heads", heads) * hd
        )
        modules["anchor"] = (size, 1 if a.get("recompute", "never") == "never" else loops)
    if core:
        size = sum(layer(core) + gate("core", j) for j in range(core.get("layers", 1)))
        if core.get("out_norm"):
            modules["core_out_norm"] = (norm, 1)
        if core.get("shared", True):
            modules["core"] = (size, loops)
        else:
            modules.update({f"core.{r}": (size, 1) for r in range(loops)})
        gate = core.get("gate", {}).get("kind")
        if gate in ("lti", "decay"):
            modules["gate"] = (d if gate == "lti" else 2 * d + 1, loops)  # a; or log_A, B and log_dt
        if "state_mix" in core:
            modules["state_mix"] = (core["state_mix"].get("taps", 3), loops)
        if core.get("loop_embedding", {}).get("kind") == "sinusoidal":
            modules["loop_embedding"] = (core["loop_embedding"].get("dim", 32) * d, loops)
        if core.get("inject", {}).get("kind") == "add_norm":
            modules["inject"] = (
                d * (2 if core["inject"].get("norm", {}).get("kind") == "layernorm" else 1),
                loops,
            )
        if "lora" in core:  # down and B, and one scale row per table row
            rank = core["lora"]["rank"]
            modules["lora"] = (2 * d * rank + core["lora"]["max_loops"] * rank, loops)
        if "halt" in core:
            modules["halt"] = (d + 1, loops)
        if core.get("inject", {}).get("kind") == "concat":
            modules["inject"] = (2 * d * d, loops)  # Linear(2d -> d)
        if "readout" in core:
            modules["readout"] = (d * d, 1)
        if core.get("inject", {}).get("kind") == "diagonal":  # B, A_log, dt_bias, run every loop
            modules["inject"] = (d * d + 2 * d, loops)

    stored = sum(size for size, _ in modules.values())
    for group in spec.get("share", []):
        found = {mod for member in group["members"] for mod in _members(member, modules)}
        stored -= sum(modules[mod][0] for mod in sorted(found)[1:])
    effective = sum(size * calls for size, calls in modules.values())
    return stored, effective


def _members(member: str, modules: dict) -> list[str]:
    if member.startswith("core.loop["):
        member = f"core.{member[len('core.loop[') : -1]}"
    if member.endswith(".*"):
        prefix = member[:-1]
        return [m for m in modules if m.startswith(prefix) and m[len(prefix) :].isdigit()]
    return [member]


def shared_modules(spec: dict) -> list[list[str]]:
    """The module paths (``prelude.0``, ``core.1``) of each sharing group, as the model names them."""
    b = spec["blocks"]
    modules = {
        f"{block}.{i}": 0
        for block in ("stack", "prelude", "coda")
        if block in b
        for i in range(b[block]["layers"])
    }
    if "core" in b and not b["core"].get("shared", True):
        modules.update({f"core.{r}": 0 for r in range(b["core"]["loops"])})
    return [
        sorted({mod for member in g["members"] for mod in _members(member, modules)}, key=_module_order)
        for g in spec.get("share", [])
    ]


def _module_order(module: str) -> tuple:
    """Layers by block and index; the loop's out norm before the final norm (the order they run)."""
    block, _, index = module.partition(".")
    return (block, int(index)) if index else ({"core_out_norm": "", "norm": "~"}[block], 0)


# ----------------------------------------------------------------------------- files


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


@dataclass
class SpecFiles:
    """Spec files for the CLI: ``files`` maps a file name to its text; ``main`` is the one passed."""

    files: dict[str, str]
    main: str = "spec.yaml"
    sets: list[str] = field(default_factory=list)
    label: str = "flat"
    expect: str | None = None  # a fragment the error output must contain

    def args(self) -> list[str]:
        return [self.main, *(a for s in self.sets for a in ("--set", s))]


def resolved(spec: dict) -> Any:
    """A spec's plain data resolved in-process, as ``cartspec.resolve.resolve`` does a file."""
    from cartspec.resolve import resolve_data

    return resolve_data(spec, "x.yaml")


def write_files(folder: Path, files: SpecFiles) -> None:
    for name, text in files.files.items():
        (folder / name).write_text(text, encoding="utf-8")


def spec_files(c: Chooser, spec: dict) -> SpecFiles:
    """``spec`` split into base and child files (and maybe a grandparent) plus ``--set`` overrides
    that must load back into exactly ``spec`` (file < extends chain < --set)."""
    base, child, sets = copy.deepcopy(spec), {"name": spec["name"]}, []
    base["name"] = "base_spec"
    m = spec["model"]
    if c.boolean():  # --set wins over every file
        base["model"]["vocab_size"] = m["vocab_size"] + 1
        child["model"] = {"vocab_size": m["vocab_size"] + 2}
        sets.append(f"model.vocab_size={m['vocab_size']}")
    if c.boolean():  # the child's mapping merges into the base's, key by key
        base["model"]["max_seq_len"] = m["max_seq_len"] + 5
        child.setdefault("model", {})["max_seq_len"] = m["max_seq_len"]
    b = spec["blocks"]
    if "stack" not in b and "coda" not in b and c.boolean():  # null removes a key
        base["blocks"]["coda"] = {"layers": 1, "attention": {"kind": "mha", "bogus": 1}}
        child["blocks"] = {"coda": None}
    if "share" in spec and c.boolean():  # lists replace, never merge
        base["share"] = [{"name": "gone", "members": ["nowhere.0", "nowhere.1"]}]
        child["share"] = copy.deepcopy(spec["share"])
    core = b.get("core")
    if core is not None and "gate" not in core and c.boolean():  # --set ...=null removes a key
        base["blocks"]["core"]["gate"] = {"kind": "residual"}
        sets.append("blocks.core.gate=null")
    if core is not None and c.boolean():  # --set reaches into a nested mapping
        base["blocks"]["core"]["loops"] = core["loops"] + 1
        sets.append(f"blocks.core.loops={core['loops']}")
    files = {}
    if c.boolean():  # a three-file chain
        grand = copy.deepcopy(base)
        grand["name"] = "grand_spec"
        grand["model"]["d_model"] = m["d_model"] * 2
        base = {"extends": "grand.yaml", "name": "base_spec", "model": {"d_model": m["d_model"]}}
        files["grand.yaml"] = dump(grand)
    files["base.yaml"] = dump(base)
    files["spec.yaml"] = dump({"extends": "base.yaml", **child})
    return SpecFiles(files, "spec.yaml", sets, "extends")


# ----------------------------------------------------------------------------- invalid specs

INT_LIMITS = {  # (path suffix, lowest allowed, highest allowed)
    ("model", "vocab_size"): (2, 1 << 21),
    ("model", "d_model"): (8, 1 << 16),
    ("model", "max_seq_len"): (1, 1 << 20),
    ("model", "head_dim"): (4, 1024),
    ("ffn", "hidden"): (1, 1 << 18),
    ("ffn", "multiple_of"): (1, 4096),
    ("layers",): (1, 1024),  # stacks: at most 1024; core.layers: 64
    ("loops",): (1, 256),
    ("kv_heads",): (1, 4096),
    ("kv_latent",): (1, 1 << 16),
    ("taps",): (1, 16),
    ("dim",): (2, 4096),
    ("max_loops",): (1, 4096),
    ("seq_len",): (1, 1 << 20),
    ("micro_batch",): (1, 65536),
    ("steps",): (1, 100_000_000),
}
FLOAT_LIMITS = {  # values each float field refuses
    ("norm", "eps"): [0.0, -1.0, 1.0, 5.0, float("nan")],
    ("model", "init_std"): [0.0, -0.02, 1.5, float("inf")],
    ("gate", "init"): [0.0, 1.0, -0.5, 2.0, float("nan")],
    ("rope_base",): [1.0, 0.5, -10.0, 1e12],
}
BOOL_KEYS = ("tie_embeddings", "rope", "causal", "shared", "checkpoint")
REQUIRED = (
    ("name",),
    ("model",),
    ("blocks",),
    ("model", "vocab_size"),
    ("model", "d_model"),
    ("model", "max_seq_len"),
)


def leaves(data: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, value) in ``data``, mappings and lists included, parents first."""
    out = [(path, data)]
    if isinstance(data, dict):
        for k, v in data.items():
            out += leaves(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += leaves(v, (*path, i))
    return out


def get(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


def put(data: Any, path: tuple, value: Any) -> None:
    get(data, path[:-1])[path[-1]] = value


def _ends(path: tuple, suffix: tuple) -> bool:
    return path[-len(suffix) :] == suffix


def _int_fields(spec: dict) -> list[tuple[tuple, tuple[int, int]]]:
    found = []
    for path, value in leaves(spec):
        if not isinstance(value, int) or isinstance(value, bool) or path[:1] == ("share",):
            continue
        for suffix, limits in INT_LIMITS.items():
            if _ends(path, suffix):
                found.append((path, limits))
                break
    return found


def _flat(label: str, data: Any, expect: str | None = None, sets: list[str] | None = None) -> SpecFiles:
    return SpecFiles({"spec.yaml": dump(data)}, "spec.yaml", sets or [], label, expect)


def _wrong_type(c: Chooser, spec: dict) -> SpecFiles:
    path, value = c.choice([(p, v) for p, v in leaves(spec) if p and p[0] != "description"])
    if isinstance(value, bool):
        bad = c.choice(["maybe", [True], {"x": 1}, 2])
    elif isinstance(value, int):
        bad = c.choice(["many", [1, 2], {"x": 1}, 1.5, "1.5"])
    elif isinstance(value, float):
        bad = c.choice(["lots", [0.5], {"x": 1}])
    elif isinstance(value, str):
        bad = c.choice(
            [[value], {"x": value}, 12, "no_such_kind" if path[-1] in ("kind", "form", "recompute") else 12]
        )
    elif isinstance(value, list):
        bad = c.choice(["a list", 7, {"x": 1}])
    else:  # a mapping
        bad = c.choice(["a mapping", 7, [1, 2]])
    put(spec, path, bad)
    return _flat("wrong type", spec)


def _out_of_range(c: Chooser, spec: dict) -> SpecFiles:
    ints = _int_fields(spec)
    floats = [
        (p, bad)
        for p, v in leaves(spec)
        if isinstance(v, float)
        for suffix, bad in FLOAT_LIMITS.items()
        if _ends(p, suffix)
    ]
    if floats and c.boolean():
        path, bad = c.choice(floats)
        put(spec, path, c.choice(bad))
    else:
        path, (lo, hi) = c.choice(ints)
        put(spec, path, c.choice([0, -1, lo - 1, hi + 1, -(2**31), 10**9, 2**64, 10**30]))
    return _flat("out of range", spec)


def _semantic(c: Chooser, spec: dict) -> SpecFiles:
    """Values each fine alone that do not fit together."""
    m, b = spec["model"], spec["blocks"]
    heads = m["d_model"] // m["head_dim"]
    options = ["indivisible", "huge", "seq_len", "stack_and_loop", "no_blocks", "min_lr"]
    attentions = [(blk, b[blk]["attention"]) for blk in ("stack", "prelude", "core", "coda") if blk in b]
    mha = [(blk, a) for blk, a in attentions if a["kind"] == "mha"]
    if mha:
        options.append("kv_heads")
    if len([a for _, a in attentions if a["kind"] != "cross"]) >= 2:
        options.append("rope_base")
    core = b.get("core")
    if core is not None:
        options += ["max_loops", "taps_init"]
    what = c.choice(options)
    if what == "indivisible":
        m["d_model"] = m["head_dim"] * heads + c.integer(1, m["head_dim"] - 1)
    elif what == "huge":  # every size within its bounds, the whole far beyond any machine
        m.update(d_model=1 << 16, head_dim=64, vocab_size=1 << 21)
        for _, a in attentions:
            a.pop("kv_heads", None)
            a.pop("kv_latent", None)
        b.get("anchor", {}).pop("kv_heads", None)
        b.get("anchor", {}).pop("kv_latent", None)
        spec.pop("share", None)
    elif what == "seq_len":
        spec.setdefault("train", {})["seq_len"] = m["max_seq_len"] + c.integer(1, 100)
    elif what == "stack_and_loop":
        b["stack"] = {"layers": 1, "attention": {"kind": "mha"}}
        b["prelude"] = {"layers": 1, "attention": {"kind": "mha"}}
    elif what == "no_blocks":
        spec["blocks"] = c.choice([{}, {"anchor": {"from": "embedding"}}])
        spec.pop("share", None)
    elif what == "min_lr":
        spec["train"] = {"optimizer": {"lr": 0.001}, "schedule": {"min_lr": 0.01}}
    elif what == "kv_heads":
        _, a = c.choice(mha)
        a["kv_heads"] = c.choice([k for k in range(2, 2 * heads + 2) if k > heads or heads % k])
    elif what == "rope_base":
        selfs = [a for _, a in attentions if a["kind"] != "cross"]
        for i, a in enumerate(selfs):
            a["rope"] = True
            a["rope_base"] = 1000.0 * (i + 2)
    elif what == "max_loops":
        core["loops"] = max(core["loops"], 2)
        core["loop_embedding"] = {"kind": "sinusoidal", "max_loops": core["loops"] - 1}
        spec.pop("share", None)
    elif what == "taps_init":
        core["state_mix"] = {"kind": "hyper", "taps": 2, "init": c.choice([[1.0], [1.0, 0.0, 0.0], []])}
    return _flat(f"semantic: {what}", spec)


def misspell(c: Chooser, key: str) -> str:
    i = c.integer(0, len(key) - 2)
    how = c.choice(["swap", "drop", "double"])
    if how == "swap":
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if how == "drop":
        return key[:i] + key[i + 1 :]
    return key[:i] + key[i] + key[i:]


def _unknown_key(c: Chooser, spec: dict) -> SpecFiles:
    known = {f.alias or n for model in _schema_models() for n, f in model.model_fields.items()}
    mappings = [(p, v) for p, v in leaves(spec) if isinstance(v, dict)]
    path, mapping = c.choice(mappings)
    keys = [k for k in mapping if len(k) >= 5 and k != "kind"]
    if keys and c.boolean():
        key = c.choice(keys)
        typo = misspell(c, key)
        if typo not in known and typo not in mapping:
            mapping[typo] = mapping[key]
            return _flat("unknown key (misspelt)", spec, "did you mean")
    mapping["zz_no_such_key"] = 1
    return _flat("unknown key", spec, "unknown key 'zz_no_such_key'")


def _schema_models() -> list:
    from pydantic import BaseModel

    from cartspec import schema

    return [v for v in vars(schema).values() if isinstance(v, type) and issubclass(v, BaseModel)]


def _missing_key(c: Chooser, spec: dict) -> SpecFiles:
    options = [p for p in REQUIRED]
    for path, value in leaves(spec):
        if isinstance(value, dict) and path:
            for key in ("kind", "layers", "attention", "loops", "members"):
                optional = (key == "kind" and path[-1] in ("anchor", "ffn", "norm")) or (
                    key == "layers" and path[-1] == "core"
                )
                if key in value and not optional:
                    options.append((*path, key))
        if path[:1] == ("share",) and len(path) == 2:
            options.append((*path, "name"))
    path = c.choice(options)
    del get(spec, path[:-1])[path[-1]]
    return _flat("missing key", spec, "missing")


def _dangling_anchor(c: Chooser, spec: dict) -> SpecFiles:
    b = spec["blocks"]
    spec.pop("share", None)
    b.pop("stack", None)
    core = b.setdefault("core", {"loops": 2, "attention": {"kind": "mha"}})
    what = c.choice(["to", "no_anchor", "from", "unused_anchor"])
    if what == "to":
        b.setdefault("anchor", {"from": "embedding"})
        core["attention"] = {"kind": "cross", "to": c.choice(["nowhere", "anchor2", "prelude", "core"])}
    elif what == "no_anchor":
        b.pop("anchor", None)
        core["attention"] = {"kind": "cross"}
    elif what == "from":
        core["attention"] = {"kind": "cross"}
        b["anchor"] = {"from": c.choice(["coda", "core", "anchor", "nowhere"])}
    else:
        b["anchor"] = {"from": "embedding"}
        if core["attention"]["kind"] == "cross":
            core["attention"] = {"kind": "mla"}
    return _flat(f"dangling anchor: {what}", spec)


def _share_mismatch(c: Chooser, spec: dict) -> SpecFiles:
    b = spec["blocks"]
    what = c.choice(["structure", "unknown member", "one member", "claimed twice", "module name"])
    if what == "structure":
        for blk in ("stack", "anchor", "core", "coda"):
            b.pop(blk, None)
        first = {"kind": "mha"}
        other = c.choice([{"kind": "mla"}, {"kind": "mha", "causal": False}, {"kind": "mha", "rope": False}])
        b["prelude"] = {"layers": 1, "attention": first}
        b["coda"] = {"layers": 1, "attention": other}
        spec["model"]["ffn"] = {"kind": "swiglu", "multiple_of": 16}
        for key in ("rope_base",):
            first.pop(key, None)
        members = ["prelude.0", "coda.0"]
    elif what == "unknown member":
        members = [c.choice(["prelude.9", "stack.99", "core.loop[7]", "nowhere", "embedding", ""]), "x.0"]
    elif what == "one member":
        layer_block = next((blk for blk in ("stack", "prelude", "coda") if blk in b), None)
        members = [f"{layer_block}.0"] if layer_block else ["core.loop[0]"]
        if layer_block is None and b["core"].get("shared", True):
            members = ["nowhere.0"]
    elif what == "claimed twice":
        b.pop("stack", None)
        b["prelude"] = {"layers": 2, "attention": b.get("prelude", {}).get("attention", _mha(spec))}
        spec["share"] = [
            {"name": "one", "members": ["prelude.*"]},
            {"name": "two", "members": ["prelude.0", "prelude.1"]},
        ]
        return _flat("share: claimed twice", spec, "already in sharing group")
    else:
        b.pop("stack", None)
        b["prelude"] = {"layers": 2, "attention": b.get("prelude", {}).get("attention", _mha(spec))}
        spec["share"] = [{"name": c.choice(["embedding", "norm"]), "members": ["prelude.*"]}]
        return _flat("share: module name", spec, "already the name")
    spec["share"] = [{"name": "tied", "members": members}]
    return _flat(f"share: {what}", spec)


def _mha(spec: dict) -> dict:
    """A plain MHA attention that agrees with the spec's RoPE base."""
    bases = [v for p, v in leaves(spec["blocks"]) if p[-1:] == ("rope_base",)]
    return {"kind": "mha", **({"rope_base": bases[0]} if bases else {})}


def _extends(c: Chooser, spec: dict) -> SpecFiles:
    what = c.choice(["cycle", "self", "missing", "not a path", "too deep"])
    body = dump(spec)
    if what == "cycle":
        files = {"spec.yaml": "extends: other.yaml\n" + body, "other.yaml": "extends: spec.yaml\n" + body}
        return SpecFiles(files, "spec.yaml", [], "extends cycle", "extends cycle")
    if what == "self":
        return SpecFiles(
            {"spec.yaml": "extends: spec.yaml\n" + body}, "spec.yaml", [], "extends self", "cycle"
        )
    if what == "missing":
        return SpecFiles(
            {"spec.yaml": "extends: no_such_base.yaml\n" + body},
            "spec.yaml",
            [],
            "extends missing",
            "no such file",
        )
    if what == "not a path":
        bad = c.choice(["5", "[a.yaml]", "{a: 1}", "''", "true"])
        return SpecFiles({"spec.yaml": f"extends: {bad}\n" + body}, "spec.yaml", [], "extends not a path")
    files = {f"s{i}.yaml": f"extends: s{i + 1}.yaml\nname: s{i}\n" for i in range(20)}
    files["s20.yaml"] = body
    return SpecFiles(files, "s0.yaml", [], "extends too deep", "deeper than")


def _bad_set(c: Chooser, spec: dict) -> SpecFiles:
    options = [
        "model.d_model.x=1",
        "nonsense",
        "blocks.prelude.layers=[",
        "=5",
        "model..d_model=1",
        "extends=other.yaml",
        "share.7.name=x",
        "model.d_model=-3",
        "model.bogus_key=1",
        "name=Bad Name",
        "model.d_model={",
        "model.vocab_size=!!python/object/apply:os.getcwd []",
        "blocks=[1, 2]",
        "model.norm.kind=batchnorm",
    ]
    if "share" not in spec:
        spec["share"] = []
    override = c.choice(options)
    return _flat("bad --set", spec, f"--set {override}:", [override])


YAML_BREAKERS = [
    ("unclosed bracket", "model: {vocab_size: 5\n"),
    ("tab indentation", "model:\n\tvocab_size: 5\n"),
    ("duplicate key", "name: again\n"),
    ("merge key", "extra: &x {a: 1}\nmore:\n  <<: *x\n"),
    ("non-string key", "1: one\n"),
    ("python tag", "evil: !!python/object/apply:os.getcwd []\n"),
    ("python name tag", "evil: !!python/name:os.system\n"),
    ("mapping tag", "evil: !!python/object:collections.OrderedDict {a: 1}\n"),
    ("custom tag", "evil: !custom 1\n"),
    ("bad indentation", "model:\n  vocab_size: 5\n vocab_size: 6\n"),
    ("stray document", "---\n- a list\n"),
    ("bad escape", 'name: "a\\qb"\n'),
]


def _broken_yaml(c: Chooser, spec: dict) -> SpecFiles:
    label, text = c.choice(YAML_BREAKERS)
    body = dump(spec)
    if c.choice(["append", "whole"]) == "whole" and label not in ("duplicate key", "non-string key"):
        body = ""
    return SpecFiles({"spec.yaml": body + text}, "spec.yaml", [], f"yaml: {label}")


def _top_level(c: Chooser, spec: dict) -> SpecFiles:
    text = c.choice(["", "# only a comment\n", "- a\n- b\n", "just a string\n", "42\n", "~\n", "[]\n"])
    return SpecFiles({"spec.yaml": text}, "spec.yaml", [], "not a mapping")


BAD_NAMES = [
    "",
    "Bad",
    "1abc",
    "a-b",
    "a b",
    "x" * 65,
    "a'b",
    'a"b',
    "a\nb",
    "a\\b",
    "a;import os",
    'x"""; import os; os.system("echo pwned") #',
    "_lead",
    "é",
    "a.b",
]


def _bad_identifier(c: Chooser, spec: dict) -> SpecFiles:
    bad = c.choice(BAD_NAMES + [c.text(12)])
    if _is_identifier(bad):
        bad += "-"
    b = spec["blocks"]
    where = c.choice(["name", "share", "to", "from"])
    if where == "name":
        spec["name"] = bad
    elif where == "share":
        spec["share"] = [{"name": bad, "members": ["a.0", "b.0"]}]
    elif where == "to":
        b.pop("stack", None)
        b["anchor"] = {"from": "embedding"}
        b["core"] = {"loops": 1, "attention": {"kind": "cross", "to": bad}}
        spec.pop("share", None)
    else:
        b.pop("stack", None)
        b["anchor"] = {"from": bad}
        b["core"] = {"loops": 1, "attention": {"kind": "cross"}}
        spec.pop("share", None)
    return _flat(f"bad identifier in {where}", spec)


def _is_identifier(text: str) -> bool:
    import re

    from cartspec.schema import IDENTIFIER

    return re.fullmatch(IDENTIFIER, text) is not None


MUTATIONS: list[Callable[[Chooser, dict], SpecFiles]] = [
    _wrong_type,
    _out_of_range,
    _semantic,
    _unknown_key,
    _missing_key,
    _dangling_anchor,
    _share_mismatch,
    _extends,
    _bad_set,
    _broken_yaml,
    _top_level,
    _bad_identifier,
]


def invalid_case(c: Chooser) -> SpecFiles:
    """A spec that is certainly invalid, one mutation away from a valid one."""
    spec = valid_spec(c)
    return c.choice(MUTATIONS)(c, spec)


# ----------------------------------------------------------------------------- anything goes

NASTY_VALUES: list[Any] = [
    0,
    -1,
    1,
    2,
    3,
    7,
    64,
    2**31,
    2**63,
    2**64,
    10**100,
    -(10**100),
    0.5,
    1.0,
    -0.0,
    1e-300,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    None,
    "",
    " ",
    "a",
    "prelude",
    "anchor",
    "core",
    "embedding",
    "x\ny",
    "'\"\\",
    "${x}",
    "{{ x }}",
    "__import__('os')",
    [],
    [1],
    [None],
    [[1, 2]],
    {},
    {"kind": "mha"},
    {"kind": "mla", "kv_latent": 3},
    {"kind": "cross"},
    {"kind": "lti", "form": "contractive"},
    {"kind": "hyper", "taps": 16},
    {"kind": "sinusoidal", "dim": 4096, "max_loops": 4096},
    {"from": "embedding"},
    {"layers": 1, "attention": {"kind": "mha"}},
    {"loops": 256, "attention": {"kind": "mha"}},
    "mha",
    "mla",
    "cross",
    "lti",
    "hyper",
    "sinusoidal",
    "kv",
    "mla_kv",
    "every_loop",
    "never",
    "prelude.*",
    "core.loop[0]",
    "core.*",
    "*",
    "stack.0",
    [{"name": "g", "members": ["prelude.*"]}],
    [{"name": "g", "members": ["core.*"]}],
    [{"name": "g", "members": ["stack.0", "stack.1", "stack.0"]}],
]
KEYS = [
    "kind",
    "layers",
    "loops",
    "shared",
    "attention",
    "kv_heads",
    "kv_latent",
    "to",
    "from",
    "rope",
    "extends",
]


def random_case(c: Chooser) -> SpecFiles:
    """A valid spec with one to three random edits: it may stay valid or become invalid."""
    spec = valid_spec(c)
    if c.integer(0, 5) == 0:
        return c.choice(MUTATIONS)(c, spec)
    for _ in range(c.integer(1, 3)):
        how = c.choice(["tweak", "tweak", "tweak", "replace", "delete", "add", "text"])
        paths = [p for p, _ in leaves(spec) if p]
        if how == "tweak" and paths:  # a value of the same type, often still valid
            path = c.choice(paths)
            put(spec, path, _tweak(c, get(spec, path)))
        elif how == "replace" and paths:
            put(spec, c.choice(paths), copy.deepcopy(c.choice(NASTY_VALUES)))
        elif how == "delete" and paths:
            path = c.choice(paths)
            del get(spec, path[:-1])[path[-1]]
        elif how == "add":
            mappings = [v for _, v in leaves(spec) if isinstance(v, dict)]
            if mappings:
                c.choice(mappings)[c.choice(KEYS)] = copy.deepcopy(c.choice(NASTY_VALUES))
        elif how == "text":
            text = dump(spec)
            i = c.integer(0, len(text))
            j = min(len(text), i + c.integer(0, 8))
            text = text[:i] + c.choice(["", c.text(4), c.choice(list(NASTY_CHARS))]) + text[j:]
            return SpecFiles({"spec.yaml": text}, "spec.yaml", [], "random text edit")
    return SpecFiles({"spec.yaml": dump(spec)}, "spec.yaml", [], "random edit")


KINDS = [
    "mha",
    "mla",
    "cross",
    "swiglu",
    "gelu",
    "relu2",
    "rmsnorm",
    "layernorm",
    "lti",
    "residual",
    "hyper",
    "gated",
]


def _tweak(c: Chooser, value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return c.choice([value + 1, value - 1, 2 * value, value // 2, 1, c.integer(0, 300)])
    if isinstance(value, float):
        return c.choice([value * 2, value / 2, 1.0 - value, 0.0])
    if isinstance(value, str):
        return c.choice([*KINDS, "prelude", "embedding", "anchor", "every_loop", "contractive", value + "_2"])
    if isinstance(value, list):
        return value[: c.integer(0, len(value))] if value else value
    return value


# ----------------------------------------------------------------------------- hypothesis


@st.composite
def valid_specs(draw) -> dict:
    return valid_spec(DrawChooser(draw))


@st.composite
def extended_specs(draw) -> tuple[dict, SpecFiles]:
    c = DrawChooser(draw)
    spec = valid_spec(c)
    return spec, spec_files(c, spec)


@st.composite
def invalid_cases(draw) -> SpecFiles:
    return invalid_case(DrawChooser(draw))


@st.composite
def random_cases(draw) -> SpecFiles:
    return random_case(DrawChooser(draw))
