"""Properties every valid spec has, over random specs of the whole language (tests/strategies.py).

The compiler-only properties run many examples; the ones that build a torch model run fewer. The
``ci`` hypothesis profile (HYPOTHESIS_PROFILE=ci) draws the full budget with a fixed seed.
"""

from __future__ import annotations

import ast
import copy
import inspect
import random
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from safetensors.torch import save_model
from strategies import counts, examples, extended_specs, resolved, shared_modules, valid_specs, write_files

from cartspec.accounting import account
from cartspec.codegen.render import render
from cartspec.loader import load
from cartspec.resolve import resolve
from cartspec.runtime import checkpoint
from cartspec.runtime.generated import compiled_module

MANY = settings(max_examples=examples(ci=200, dev=40))
SOME = settings(max_examples=examples(ci=100, dev=25))
TORCH = settings(max_examples=examples(ci=35, dev=8))


# ----------------------------------------------------------------------------- the compiler


@MANY
@given(spec=valid_specs())
def test_every_drawn_spec_validates_and_counts_as_the_definitions_say(spec):
    report = account(resolved(spec).graph)
    assert (report.stored, report.effective) == counts(spec)


@MANY
@given(spec=valid_specs())
def test_effective_is_at_least_stored(spec):
    report = account(resolved(spec).graph)
    assert report.effective >= report.stored > 0


@MANY
@given(spec=valid_specs())
def test_stored_is_the_sum_over_sharing_groups_and_effective_the_sum_over_uses(spec):
    graph = resolved(spec).graph
    report = account(graph)
    assert report.stored == sum(g.params for g in graph.groups.values())
    assert report.effective == sum(graph.groups[u.group].params for u in graph.uses if u.call)
    assert report.effective == sum(g.params * graph.calls(g.name) for g in graph.groups.values())
    members = [m for g in graph.groups.values() for m in g.members]
    assert len(members) == len(set(members)), "a module belongs to one sharing group"


@MANY
@given(spec=valid_specs())
def test_the_per_block_table_sums_to_the_totals(spec):
    report = account(resolved(spec).graph)
    assert sum(b.stored for b in report.blocks) == report.stored
    assert sum(b.effective for b in report.blocks) == report.effective
    assert sum(g.stored for g in report.groups) == report.stored
    assert sum(g.effective for g in report.groups) == report.effective
    assert report.embedding + report.non_embedding == report.stored


@MANY
@given(spec=valid_specs())
def test_forward_flops_follow_the_papers_formula_over_every_attention_use(spec):
    """docs/accounting.md: forward = 2 x (effective (paper) - embedding) x T + 4 x A x T^2 x d, with
    A one attention use per stack, prelude and coda layer and core.layers per loop; except that a
    mixture of experts costs only the experts a token runs, a LoRA's table row is looked up, not
    multiplied, and DeepSeek MLA's scores cost 2 x T^2 x heads x (nope + rope + v)."""
    report = account(resolved(spec).graph)
    m, blocks = spec["model"], spec["blocks"]
    core = blocks.get("core")
    stages = [(blocks[b], blocks[b]["layers"]) for b in ("stack", "prelude", "coda") if b in blocks]
    stages += [(core, core.get("layers", 1) * core["loops"])] if core else []
    T, d = m["max_seq_len"], m["d_model"]
    assert report.flops.attention_uses == sum(n for _, n in stages)
    scores = 0
    for block, n in stages:
        a = block["attention"]
        width = a["nope_dim"] + a["rope_dim"] + a["v_dim"] if a["kind"] == "deepseek_mla" else None
        scores += n * (2 * T * T * (d // m["head_dim"]) * width if width else 4 * T * T * d)
    untouched = 0  # parameters that are stored per call but cost no FLOPs
    if core is not None:
        moe, lora = core.get("ffn"), core.get("lora")
        if moe is not None:
            untouched += (
                core.get("layers", 1)
                * core["loops"]
                * (moe["experts"] - moe["top_k"])
                * 3
                * d
                * moe["hidden"]
            )
        if lora is not None:
            untouched += core["loops"] * lora["max_loops"] * lora["rank"]
    paper = 2 * (report.effective_paper - report.embedding - untouched) * T + scores
    assert report.flops.forward_per_sequence == paper
    assert report.flops.head_per_sequence == 2 * m["vocab_size"] * d * T
    assert report.flops.train_per_token == 3 * report.flops.forward_per_sequence / T


@SOME
@given(spec=valid_specs())
def test_compile_is_deterministic_and_ignores_key_order(spec):
    first = render(resolved(spec))
    assert render(resolved(spec)) == first
    shuffled = _shuffled(spec, random.Random(len(first)))
    assert render(resolved(shuffled)) == first
    ast.parse(first)


def _shuffled(data, rng: random.Random):
    if isinstance(data, dict):
        items = list(data.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(data, list):
        return [_shuffled(v, rng) for v in data]
    return data


@SOME
@given(drawn=extended_specs())
def test_extends_and_set_give_exactly_the_flat_spec(tmp_path_factory, drawn):
    spec, files = drawn
    folder = tmp_path_factory.mktemp("extends")
    write_files(folder, files)
    loaded = load(folder / files.main, files.sets)
    assert loaded.data == spec
    via_files = resolve(folder / files.main, files.sets)
    assert render(via_files, source="x.yaml") == render(resolved(spec), source="x.yaml")


# ----------------------------------------------------------------------------- the generated model


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generated")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(spec: dict, out: Path, seed: int = 0):
    r = resolved(spec)
    module, _ = compiled_module(r, out)
    torch.manual_seed(seed)
    return r, module.Model()


def batch(spec: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    m = spec["model"]
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, m["vocab_size"], (2, m["max_seq_len"] + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def parameter_uses(model: torch.nn.Module, idx: torch.Tensor, **kwargs) -> int:
    """Sum over one forward pass of the direct parameters of every module called."""
    total = 0

    def hook(module, *_):
        nonlocal total
        total += sum(p.numel() for p in module.parameters(recurse=False))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(idx, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total


M = {
    "vocab_size": 40,
    "d_model": 32,
    "max_seq_len": 12,
    "head_dim": 8,
    "ffn": {"kind": "swiglu", "multiple_of": 16},
}
MYTHOS_MLA = {
    "kind": "deepseek_mla",
    **{"q_rank": 12, "kv_rank": 6, "nope_dim": 4, "rope_dim": 8, "v_dim": 6},
    **{"rope_base": 500.0, "rope_style": "interleaved"},
}
# Corners every torch property runs besides the drawn specs, so each feature is met on every run.
CORNERS = [
    {  # CART with everything at once, unfrozen anchor, unshared core sharing two of its loops
        "name": "cart_corner",
        "model": {**M, "norm": {"kind": "layernorm"}, "ffn": {"kind": "gelu"}, "tie_embeddings": False},
        "blocks": {
            "prelude": {"layers": 2, "attention": {"kind": "mla", "kv_latent": 8}},
            "anchor": {"from": "prelude", "kind": "mla_kv", "recompute": "every_loop"},
            "core": {
                "loops": 3,
                "shared": False,
                "attention": {"kind": "cross"},
                "gate": {"kind": "lti", "form": "contractive"},
                "state_mix": {"kind": "hyper", "taps": 2, "init": [0.5, 0.0]},
                "loop_embedding": {"kind": "sinusoidal", "dim": 4, "max_loops": 5},
            },
            "coda": {"layers": 1, "attention": {"kind": "mla"}},
        },
        "share": [{"name": "tied_loops", "members": ["core.loop[0]", "core.loop[2]"]}],
    },
    {  # only a coda (no prelude, no core), MQA, both layers one module
        "name": "coda_only",
        "model": M,
        "blocks": {"coda": {"layers": 2, "attention": {"kind": "mha", "kv_heads": 1}}},
        "share": [{"name": "tied", "members": ["coda.*"]}],
    },
    {  # a shared self-attention core (GQA, no RoPE), checkpointed loops, prelude and coda one module
        "name": "self_core",
        "model": M,
        "blocks": {
            "prelude": {"layers": 1, "attention": {"kind": "mha", "kv_heads": 2, "rope": False}},
            "core": {
                "loops": 2,
                "layers": 2,
                "attention": {"kind": "mha", "kv_heads": 2, "rope": False},
                "gate": {"kind": "residual"},
                "state_mix": {"kind": "hyper", "taps": 1},
                "checkpoint": True,
            },
            "coda": {"layers": 1, "attention": {"kind": "mha", "kv_heads": 2, "rope": False}},
        },
        "share": [{"name": "ends", "members": ["prelude.0", "coda.0"]}],
    },
    {  # a dense, bidirectional stack named like a building block of the generated module
        "name": "rotary",
        "model": M,
        "blocks": {"stack": {"layers": 3, "attention": {"kind": "mha", "causal": False, "rope_base": 500.0}}},
        "share": [{"name": "albert", "members": ["stack.*"]}],
    },
    {  # OpenMythos's loop: DeepSeek MLA, a mixture of experts, the channel signal, norm(h + signal + e),
        # a LoRA whose table is shorter than the loop, the decay update and ACT halting
        "name": "mythos_corner",
        "model": {**M, "norm": {"kind": "layernorm"}},
        "blocks": {
            "prelude": {"layers": 1, "attention": MYTHOS_MLA},
            "core": {
                "loops": 3,
                "attention": MYTHOS_MLA,
                "ffn": {"kind": "moe", "experts": 4, "top_k": 2, "shared": 1, "hidden": 8},
                "loop_embedding": {"kind": "channels", "fraction": 3},
                "inject": {"kind": "add_norm"},
                "lora": {"kind": "per_loop", "rank": 2, "max_loops": 2},
                "gate": {"kind": "decay"},
                "halt": {"kind": "act", "threshold": 0.9},
            },
            "coda": {"layers": 1, "attention": MYTHOS_MLA},
        },
    },
    {  # the anchor read straight from the embedding, full-rank GQA K and V
        "name": "config",
        "model": {**M, "tie_embeddings": False},
        "blocks": {
            "anchor": {"from": "embedding", "kind": "kv", "kv_heads": 2},
            "core": {"loops": 4, "attention": {"kind": "cross", "causal": False}, "gate": {"kind": "lti"}},
        },
    },
]


def corners(test):
    for spec in reversed(CORNERS):
        test = example(spec=spec)(test)
    return test


@TORCH
@given(spec=valid_specs())
@corners
def test_generated_model_stores_exactly_the_stored_count(out_dir, spec):
    r, model = build(spec, out_dir)
    assert sum(p.numel() for p in model.parameters()) == account(r.graph).stored


@TORCH
@given(spec=valid_specs())
@corners
def test_forward_hooks_count_exactly_the_effective_uses(out_dir, spec):
    r, model = build(spec, out_dir)
    idx, _ = batch(spec)
    assert parameter_uses(model, idx) == account(r.graph).effective


@TORCH
@given(spec=valid_specs())
@corners
def test_a_tiny_forward_gives_a_finite_loss_and_backward_reaches_every_parameter(out_dir, spec):
    _, model = build(spec, out_dir)
    idx, targets = batch(spec)
    logits, loss = model(idx, targets)
    assert logits.shape == (*idx.shape, spec["model"]["vocab_size"])
    assert torch.isfinite(loss)
    loss.backward()
    core = spec["blocks"].get("core", {})
    mix = core.get("state_mix")
    # The blend's gradient is p_i * (s_i - sum_j p_j s_j): zero while every state it blends is the
    # same copy of e, i.e. with one tap, or one loop (the buffer starts as copies of e).
    idle_mix = mix is not None and (mix.get("taps", 3) == 1 or core["loops"] == 1)
    # One routed expert per token: its weight, renormalised over the chosen, is always 1, so the
    # router's logits choose but get no gradient (as in OpenMythos).
    lone_choice = (core.get("ffn") or {}).get("top_k") == 1
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        if ".ffn.experts." in name:  # a routed expert that no token chose learns nothing this step
            continue
        if ".ffn.router." in name and lone_choice:
            assert p.grad.abs().max() <= 1e-6, f"{name}: {p.grad}"
            continue
        if name == "state_mix.weights" and idle_mix:
            assert p.grad.abs().max() <= 1e-6, f"{name}: {p.grad}"
        else:
            assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


@TORCH
@given(spec=valid_specs())
@corners
def test_the_loops_override_runs_within_the_table_and_refuses_beyond_it(out_dir, spec):
    _, model = build(spec, out_dir)
    idx, _ = batch(spec)
    core = spec["blocks"].get("core")
    if core is None:  # a dense model has no loop API at all
        assert "loops" not in inspect.signature(model.forward).parameters
        assert not hasattr(model, "loop_stats")
        return
    loops = core["loops"]
    with pytest.raises(ValueError):
        model(idx, loops=0)
    if not core.get("shared", True):
        model(idx, loops=loops)
        with pytest.raises(ValueError):
            model(idx, loops=loops + 1)
        return
    table = core.get("loop_embedding")
    table = table if table is not None and table["kind"] == "sinusoidal" else None  # channels: no table
    most = table.get("max_loops", 16) if table is not None else loops + 2
    for n in (1, most):
        logits, _ = model(idx, loops=n)
        assert torch.isfinite(logits).all()
        # the unrolled network at n loops is the spec compiled with loops: n
        at_n = copy.deepcopy(spec)
        at_n["blocks"]["core"]["loops"] = n
        assert parameter_uses(model, idx, loops=n) == account(resolved(at_n).graph).effective
    if table is not None:
        with pytest.raises(ValueError):
            model(idx, loops=most + 1)


@TORCH
@given(spec=valid_specs())
@corners
def test_sharing_survives_a_state_dict_and_a_safetensors_round_trip(out_dir, spec, tmp_path_factory):
    _, model = build(spec, out_dir, seed=0)
    for group in shared_modules(spec):
        first = model.get_submodule(group[0])
        assert all(model.get_submodule(m) is first for m in group[1:]), group

    def sharing(m: torch.nn.Module) -> list[list[str]]:
        by_tensor: dict[int, list[str]] = {}
        for name, p in m.named_parameters(remove_duplicate=False):
            by_tensor.setdefault(id(p), []).append(name)
        return sorted(by_tensor.values())

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _, fresh = build(spec, out_dir, seed=1)
    fresh.load_state_dict(model.state_dict())
    assert sharing(fresh) == sharing(model)
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())

    folder = tmp_path_factory.mktemp("ckpt")
    save_model(model, str(folder / "model.safetensors"))
    _, restored = build(spec, out_dir, seed=2)
    checkpoint.load_weights(folder, restored)
    assert sharing(restored) == sharing(model)
    assert all(torch.equal(v, saved[k]) for k, v in restored.state_dict().items())


# ----------------------------------------------------------------------------- FLOPs and the oracle


def flop_counter_view(spec: dict, report) -> int:
    """The report's forward FLOPs plus the head, as FlopCounterMode sees them (docs/accounting.md):
    it counts matmuls only, so the norms (2 x their parameters x T per use, the latent norms of DeepSeek
    MLA and an add_norm inject's too), Huginn's qk_bias (added, 2 x 2d x T per use), Parcae's diagonal
    inject (its decay and step are elementwise) and the elementwise loop parts (the paper's once-only
    gate and blend, the decay gate in every loop, the halting bias) drop out, and the loop-embedding
    projection is one matmul of one table row per loop, not one per token."""
    m, blocks = spec["model"], spec["blocks"]
    d, T = m["d_model"], m["max_seq_len"]
    widths = 1 if m.get("norm", {}).get("kind", "rmsnorm") == "rmsnorm" else 2
    per_norm = 2 * widths * d * T
    placement = m.get("norm", {}).get("placement", "pre")

    def norms_per_layer(stage: dict) -> int:
        return 4 if stage.get("norm_placement", placement) == "sandwich" else 2

    def biased(stage: dict) -> bool:
        return bool(stage["attention"].get("qk_bias"))

    stages = [blocks[b] for b in ("stack", "prelude", "coda") if b in blocks]
    norm_uses = 1 + sum(s["layers"] * norms_per_layer(s) for s in stages)
    bias_uses = sum(s["layers"] for s in stages if biased(s))
    core = blocks.get("core")
    loop_control = visible = elementwise = 0
    uses = [(s, s["layers"]) for s in stages]
    uses += [(core, core.get("layers", 1) * core["loops"])] if core else []
    latent_norms = 0  # DeepSeek MLA's norms on its two latents, per layer use
    for block, n in uses:
        a = block["attention"]
        if a["kind"] == "deepseek_mla":
            latent_norms += n * 2 * widths * (a["q_rank"] + a["kv_rank"]) * T
    if core is not None:
        loops = core["loops"]
        runs = core.get("layers", 1) * loops
        norm_uses += runs * norms_per_layer(core) + (1 if core.get("out_norm") else 0)
        bias_uses += runs if biased(core) else 0
        gate = (core.get("gate") or {}).get("kind")
        if gate == "lti":
            loop_control += 2 * d * T
        elif gate == "decay":
            loop_control += loops * 2 * (2 * d + 1) * T
        inject = core.get("inject") or {}
        if inject.get("kind") == "add_norm":
            loop_control += (
                loops * 2 * d * T * (2 if inject.get("norm", {}).get("kind") == "layernorm" else 1)
            )
        if "halt" in core:
            loop_control += loops * 2 * T  # the bias
        if "state_mix" in core:
            loop_control += 2 * core["state_mix"].get("taps", 3) * T
        if core.get("loop_embedding", {}).get("kind") == "sinusoidal":
            dim = core["loop_embedding"].get("dim", 32)
            loop_control += 2 * dim * d * T
            visible += core["loops"] * 2 * dim * d
        if (core.get("inject") or {}).get("kind") == "diagonal":  # decay and step: elementwise
            elementwise += core["loops"] * 2 * 2 * d * T
    norm_uses += sum(1 for b in ("stack", "prelude", "coda") if blocks.get(b, {}).get("output_norm"))
    unseen = norm_uses * per_norm + latent_norms + bias_uses * 2 * 2 * d * T + loop_control + elementwise
    return report.flops.forward_per_sequence + report.flops.head_per_sequence - unseen + visible


@TORCH
@given(spec=valid_specs())
@corners
def test_flop_counter_on_the_meta_device_agrees_with_the_reported_flops(out_dir, spec):
    """Multi-layer cores, GQA, every kind: the paper's convention, checked against torch's count.
    Once the terms FlopCounterMode cannot see are taken out, the two agree exactly (the issue asks
    for 0.5%; exact also catches a wrong norm or loop-control term, which is smaller than that)."""
    from torch.utils.flop_counter import FlopCounterMode

    r = resolved(spec)
    module, _ = compiled_module(r, out_dir)
    with torch.device("meta"):
        model = module.Model()
    idx = torch.zeros(1, spec["model"]["max_seq_len"], dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx)
    counted, expected = counter.get_total_flops(), flop_counter_view(spec, account(r.graph))
    assert counted == expected, f"FlopCounterMode {counted:,} vs report {expected:,}"


@TORCH
@given(spec=valid_specs())
@corners
def test_generated_logits_equal_the_independent_oracle(out_dir, spec):
    """tests/oracles.py runs the drawn spec from its data and the generated model's weights."""
    from gen_helpers import randomize_
    from oracles import model_logits

    _, model = build(spec, out_dir)
    randomize_(model, seed=3).eval()
    idx, _ = batch(spec)
    with torch.no_grad():
        logits, _ = model(idx)
    expected = model_logits(spec, model.state_dict(), idx)
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(logits / scale, expected / scale, rtol=1e-4, atol=1e-4)
