"""Cached incremental decoding: every generated model, given a KVCache, computes for new tokens
exactly what a full forward over the whole prefix computes (greedy tokens identical, logits equal
to float32 rounding), at several loop counts."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import ROOT, SHIPPED, VARIANTS, build, compile_variant, randomize_, shipped

from cartspec.resolve import resolve
from cartspec.runtime.decode import Decoding, Sampling, decode, plain_attributes

# every shipped spec, shrunk to a width a CPU test decodes in milliseconds
TINY = (
    "model.d_model=32",
    "model.head_dim=16",
    "model.vocab_size=64",
    "model.max_seq_len=32",
    "train.seq_len=32",
)
PROMPT, NEW = 5, 12


def greedy(model, prompt: torch.Tensor, new: int, cached: bool, **loops) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens after ``prompt``, and the logits of the last step."""
    idx = prompt
    cache = model.new_cache(**loops) if cached else None
    step = idx
    for _ in range(new):
        logits, _ = model(step if cached else idx, cache=cache, **loops)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
        step = nxt
    return idx[0, prompt.size(1) :].tolist(), logits[:, -1]


def loop_counts(model) -> list[dict]:
    config = model.config
    if not hasattr(model, "loop_stats"):
        return [{}]
    if "core" in model._modules and isinstance(model.core, torch.nn.ModuleList):
        return [{"loops": config.loops}]  # an unshared core runs exactly its R blocks
    most = getattr(config, "max_loops", config.loops + 2)
    return [{"loops": n} for n in sorted({1, config.loops, min(config.loops + 2, most)})]


def check(model, vocab: int) -> None:
    torch.manual_seed(0)
    prompt = torch.randint(0, vocab, (1, PROMPT))
    with torch.no_grad():
        for loops in loop_counts(model):
            full, full_logits = greedy(model, prompt, NEW, cached=False, **loops)
            fast, fast_logits = greedy(model, prompt, NEW, cached=True, **loops)
            assert fast == full, loops
            torch.testing.assert_close(fast_logits, full_logits, rtol=1e-4, atol=1e-4)


def deterministic_and_shallow(spec: str) -> tuple[str, ...]:
    """A noisy start drawn fresh at every forward (Huginn's, seed null) meets other noise in a cached
    step than in the full forward: such a spec decodes here from its seeded table. And a deep loop
    of O(1) random weights (Huginn's 32) blows float32 rounding up past the tolerance (the tokens
    still agree): it decodes at 4 loops."""
    core = resolve(ROOT / spec).spec.blocks.core
    if core is None:
        return ()
    fresh = core.init_state.kind == "trunc_normal" and core.init_state.seed is None
    return ("blocks.core.init_state.seed=0",) * fresh + ("blocks.core.loops=4",) * (core.loops > 8)


@pytest.mark.parametrize("spec", SHIPPED)
def test_cached_decoding_equals_full_decoding_for_every_shipped_spec(tmp_path, spec):
    sets = (*TINY, *deterministic_and_shallow(spec))
    _, module = compile_variant(tmp_path, "shipped", sets, spec=ROOT / spec, small=False)
    check(randomize_(build(module), seed=1).eval(), 64)


CAUSAL = {k: v for k, v in VARIANTS.items() if k != "bidirectional_coda"}


@pytest.mark.parametrize("label", sorted(CAUSAL))
def test_cached_decoding_equals_full_decoding_on_every_template_branch(tmp_path, label):
    spec, sets = CAUSAL[label]
    resolved, module = compile_variant(tmp_path, label, sets, spec=spec)
    check(randomize_(build(module), seed=2).eval(), resolved.spec.model.vocab_size)


def test_a_cache_refuses_another_loop_count_a_full_table_and_bidirectional_models(tmp_path):
    _, module = compile_variant(tmp_path, "cart", ())
    model = build(module).eval()
    cache = model.new_cache(loops=2)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache, loops=2)
        with pytest.raises(ValueError, match="made for 2 loops"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache, loops=3)
        with pytest.raises(ValueError, match="exceed 32"):
            model(torch.zeros(1, 29, dtype=torch.long), cache=cache, loops=2)
    _, bidirectional = compile_variant(tmp_path, "bidi", VARIANTS["bidirectional_coda"][1])
    with pytest.raises(ValueError, match="bidirectionally"):
        build(bidirectional).new_cache()


def test_decoding_refuses_per_sequence_depths(tmp_path):
    """The cache keeps each loop's embedding by loop index: decoding runs one loop count for all."""
    _, module = compile_variant(tmp_path, "cart", ())
    model = build(module).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="per-sequence depths are a training schedule"):
        model(torch.zeros(2, 3, dtype=torch.long), depths=torch.tensor([1, 2]), cache=model.new_cache())


def cached_values(cache) -> int:
    """Keys and values a cache holds, over all its attention uses."""
    found = [cache]
    total = 0
    while found:
        item = found.pop()
        if isinstance(item, list):
            found += item
        elif hasattr(item, "extend") and hasattr(item, "length"):  # a LayerKV
            total += 0 if item.k is None else item.k[..., : item.length, :].numel() * 2
        elif hasattr(item, "__dict__"):
            found += [v for v in vars(item).values() if isinstance(v, list) or hasattr(v, "extend")]
    return total


def cache_after_six_tokens(model, loops: int) -> int:
    cache = model.new_cache(loops=loops)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache, loops=loops)
    return cached_values(cache)


def test_a_cart_cache_does_not_grow_with_the_loop_count_but_a_self_attending_core_does(tmp_path):
    _, cart = compile_variant(tmp_path, "cart", ())
    model = build(cart).eval()
    sizes = [cache_after_six_tokens(model, loops) for loops in (1, 3, 8)]
    assert sizes[0] == sizes[1] == sizes[2] > 0  # the anchor's K, V once per position
    self_attending = []
    for loops in (1, 3):  # its core is unshared: one model per loop count
        sets = (*VARIANTS["self_attn_core"][1], f"blocks.core.loops={loops}")
        _, module = compile_variant(tmp_path, f"self_attn_{loops}", sets)
        self_attending.append(cache_after_six_tokens(build(module).eval(), loops))
    assert self_attending[1] > self_attending[0]  # keys per loop


@pytest.mark.parametrize("label", ["cart", "self_attn_core", "dense_gqa"])
def test_a_prompt_fed_in_chunks_through_the_cache_gives_the_full_forward_logits(tmp_path, label):
    """Chunks after cached positions (T > 1 new queries against S > T keys) mask causally from their offset."""
    spec, sets = VARIANTS[label]
    resolved, module = compile_variant(tmp_path, label, sets, spec=spec)
    model = randomize_(build(module), seed=4).eval()
    idx = torch.randint(
        0, resolved.spec.model.vocab_size, (2, 11), generator=torch.Generator().manual_seed(5)
    )
    cache = model.new_cache()
    with torch.no_grad():
        full, _ = model(idx)
        parts = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 4), (4, 9), (9, 11))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)


def decode_cart_tiny(model, on_token) -> list[int]:
    return decode(
        model,
        [1, 2, 3],
        4,
        window=model.config.max_seq_len,
        vocab=model.config.vocab_size,
        stop=None,
        sampling=Sampling(temperature=0),
        decoding=Decoding(),
        on_token=on_token,
    ).ids


def test_decoding_finds_the_weights_as_plain_attributes_and_leaves_the_model_as_it_was():
    """For the length of a decode the modules' entries sit in their __dict__ (no __getattr__);
    afterwards, and after a decode that fails, the model is as before."""
    _, _, module = shipped("specs/tiny/cart_tiny.yaml")
    model = build(module).eval()
    before = {name: dict(m.__dict__) for name, m in model.named_modules()}
    seen = []
    ids = decode_cart_tiny(model, lambda _: seen.append(model.core.attn.q_proj.__dict__.get("weight")))
    assert len(ids) == 4 and all(w is model.core.attn.q_proj._parameters["weight"] for w in seen)
    assert {name: dict(m.__dict__) for name, m in model.named_modules()} == before

    def fail(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        decode_cart_tiny(model, fail)
    assert {name: dict(m.__dict__) for name, m in model.named_modules()} == before


def test_plain_attributes_leave_a_name_the_class_defines_to_the_class():
    class Shadowed(torch.nn.Module):
        def norm(self) -> str:
            return "the method"

    holder = Shadowed()
    holder._modules["norm"] = torch.nn.Identity()  # behind add_module's back: the class's method wins
    holder.register_buffer("scale", torch.ones(1))
    with plain_attributes(holder):
        assert holder.norm() == "the method" and holder.__dict__["scale"] is holder._buffers["scale"]
    assert "scale" not in holder.__dict__
