"""Generated models do what the spec and the accounting say: parameter counts, CART's numerics against an
independent re-implementation of the author's code, weight sharing as tensor identity, torch.compile,
per-loop activation checkpointing and FLOPs.

Shipped specs are built at their real size on the meta device (no memory, no time); numerics run on a
CART smaller than cart_tiny (d=64, P=2, R=3), compiled into a temporary folder.
"""

from __future__ import annotations

import textwrap
from functools import cache

import pytest
import torch
from gen_helpers import (
    CART_TINY,
    SHIPPED,
    SMALL,
    VARIANTS,
    build,
    compile_variant,
    count_parameter_uses,
    randomize_,
    shipped,
    small_ffn_hidden,
    tokens,
    transfer_,
)
from reference.cart_author import AuthorCART, AuthorConfig, load_generated
from torch.utils.flop_counter import FlopCounterMode

from cartspec.accounting import account
from cartspec.resolve import resolve
from cartspec.runtime.generated import compiled_module

B, T = 2, 16  # batch and length of the small numeric checks

# ----------------------------------------------------------------------------- 1. parameter counts


def device_for(spec: str) -> str:
    return "cpu" if spec.startswith("specs/tiny/") else "meta"


@cache
def shipped_model(spec: str) -> torch.nn.Module:
    """A shipped spec's generated model at its real size: on the meta device (no memory), tiny ones on
    the CPU. Built once and shared by the tests below, which leave it as they found it."""
    return build(shipped(spec)[2], device_for(spec))


@pytest.mark.parametrize("spec", SHIPPED)
def test_generated_model_stores_exactly_the_accounted_parameters(spec):
    _, report, _ = shipped(spec)
    model = shipped_model(spec)
    assert sum(p.numel() for p in model.parameters()) == report.stored


@pytest.mark.parametrize("spec", SHIPPED)
def test_generated_model_uses_parameters_as_often_as_accounted(spec):
    """Every module call in one forward pass, times its own parameters, is the effective count; a mixture
    of experts calls only a token's top-k routed experts (on the meta device, the first top-k)."""
    resolved, report, _ = shipped(spec)
    device = device_for(spec)
    model = shipped_model(spec)
    idx = tokens(1, 16 if device == "cpu" else 8, resolved.spec.model.vocab_size, device=device)
    graph = resolved.graph
    untouched = sum(g.inactive * graph.calls(g.name) for g in graph.groups.values())
    assert count_parameter_uses(model, idx) == report.effective - untouched


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """label -> (resolved, module), compiled once into one temporary folder."""
    out = tmp_path_factory.mktemp("variants")
    return {label: compile_variant(out, label, sets, spec) for label, (spec, sets) in VARIANTS.items()}


@pytest.mark.parametrize("label", VARIANTS)
def test_variant_counts_match_accounting_and_forward_runs(variants, label):
    resolved, module = variants[label]
    report = account(resolved.graph)
    model = randomize_(build(module), seed=1)
    idx = tokens(B, T, resolved.spec.model.vocab_size)
    assert sum(p.numel() for p in model.parameters()) == report.stored
    assert count_parameter_uses(model, idx) == report.effective
    logits, loss = model(idx, idx)
    assert logits.shape == (B, T, resolved.spec.model.vocab_size)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)


# ----------------------------------------------------------------------------- 2. CART numerics


# ablation -> (--set overrides of the small CART, the author's flags)
ABLATIONS = {
    "base": ((), {}),
    "no_hc": (("blocks.core.state_mix=null",), {"disable_hyper": True}),
    "no_lti": (
        ("blocks.core.gate.kind=residual", "blocks.core.gate.init=null", "blocks.core.gate.form=null"),
        {"disable_lti": True},
    ),
    "no_lie": (("blocks.core.loop_embedding=null",), {"disable_lie": True}),
    "unshared_core": (("blocks.core.shared=false",), {"unshare_core": True}),
    "self_attn_core": (
        (
            "blocks.anchor=null",
            "blocks.core.shared=false",
            "blocks.core.attention.kind=mla",
            "blocks.core.attention.to=null",
            "blocks.core.attention.rope=true",
        ),
        {"self_attn_core": True, "unshare_core": True},
    ),
    "self_attn_core_shared": (
        (
            "blocks.anchor=null",
            "blocks.core.attention.kind=mla",
            "blocks.core.attention.to=null",
            "blocks.core.attention.rope=true",
        ),
        {"self_attn_core": True},
    ),
    "unfrozen_kv": (("blocks.anchor.recompute=every_loop",), {"unfreeze_kv": True}),
    "r1": (("blocks.core.loops=1",), {"n_loops": 1}),
    "contractive": (("blocks.core.gate.form=contractive",), {"contractive": True}),
}
# with the base's weights copied in, these must change the logits; an unshared core holding R copies
# of the shared block must not
CHANGES_OUTPUT = set(ABLATIONS) - {"base", "unshared_core"}


def author_config(**flags) -> AuthorConfig:
    assert small_ffn_hidden(SMALL["d_model"]) == SMALL["ffn_hidden"]
    return AuthorConfig(**{**SMALL, **flags})


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
    """name -> generated model with the base's weights where it has them (the rest random), eval mode."""
    out = tmp_path_factory.mktemp("ablations")
    models = {}
    for name, (sets, _) in ABLATIONS.items():
        _, module = compile_variant(out, name, sets)
        models[name] = build(module)
    base_weights = randomize_(models["base"], seed=7).state_dict()
    for name, model in models.items():
        if name != "base":
            transfer_(model, base_weights, seed=8)
        model.eval()
    return models


@pytest.fixture(scope="module")
def idx():
    return tokens(B, T, SMALL["vocab_size"], seed=3)


def author_logits(model: torch.nn.Module, idx: torch.Tensor, n_loops: int | None = None, **flags):
    ref = AuthorCART(author_config(**flags))
    load_generated(ref, model.state_dict())
    with torch.no_grad():
        return ref(idx, n_loops)


@pytest.mark.parametrize("name", ABLATIONS)
def test_generated_logits_match_the_author_reference(ablations, idx, name):
    model = ablations[name]
    with torch.no_grad():
        logits, _ = model(idx)
    expected = author_logits(model, idx, **ABLATIONS[name][1])
    assert logits.abs().max() > 1  # weights at a scale where a wrong path shows
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CHANGES_OUTPUT))
def test_ablation_changes_the_logits_of_the_base_with_the_same_weights(ablations, idx, name):
    with torch.no_grad():
        base, _ = ablations["base"](idx)
        ablated, _ = ablations[name](idx)
    assert (base - ablated).abs().max() > 1e-2


def test_unshared_core_holding_copies_of_the_shared_block_equals_the_shared_model(ablations, idx):
    core = ablations["unshared_core"].core
    assert len(core) == SMALL["n_loops"]
    with torch.no_grad():
        torch.testing.assert_close(ablations["unshared_core"](idx)[0], ablations["base"](idx)[0])


def test_r1_ablation_is_the_base_run_with_one_loop(ablations, idx):
    with torch.no_grad():
        torch.testing.assert_close(ablations["r1"](idx)[0], ablations["base"](idx, loops=1)[0])


def test_loops_override_at_inference_changes_the_output_of_a_shared_loop_cart(ablations, idx):
    model = ablations["base"]
    with torch.no_grad():
        default, _ = model(idx)
        same, _ = model(idx, loops=SMALL["n_loops"])
        more, _ = model(idx, loops=SMALL["n_loops"] + 2)
    torch.testing.assert_close(default, same, rtol=0, atol=0)
    assert (more - default).abs().max() > 1e-2
    torch.testing.assert_close(
        more, author_logits(model, idx, n_loops=SMALL["n_loops"] + 2), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("loops", [0, 17])
def test_loops_outside_the_loop_embedding_table_raise_a_clear_value_error(ablations, idx, loops):
    with pytest.raises(ValueError, match=rf"loops must be in 1\.\.16.*got {loops}"):
        ablations["base"](idx, loops=loops)


def test_loops_without_a_loop_embedding_are_not_bounded_by_a_table(ablations, idx):
    with torch.no_grad():
        ablations["no_lie"](idx, loops=20)
    with pytest.raises(ValueError, match="at least 1"):
        ablations["no_lie"](idx, loops=0)


@pytest.mark.parametrize("name", ["unshared_core", "self_attn_core"])
def test_unshared_core_refuses_a_loop_count_other_than_its_block_count(ablations, idx, name):
    with pytest.raises(ValueError, match=rf"exactly {SMALL['n_loops']} blocks; got loops=2"):
        ablations[name](idx, loops=2)


def test_contractive_loop_step_is_the_cart_loop_step_minus_its_input(ablations):
    """form: contractive gives sigmoid(a) * h_in + delta, delta excluding the block's residual."""
    base, contractive = ablations["base"], ablations["contractive"]
    g = torch.Generator().manual_seed(5)
    h_in = torch.randn(B, T, SMALL["d_model"], generator=g)
    e = torch.randn(B, T, SMALL["d_model"], generator=g)
    with torch.no_grad():
        k, v = base.anchor(e)
        cart = base.loop_step(h_in, k, v)
        torch.testing.assert_close(contractive.loop_step(h_in, k, v), cart - h_in, rtol=1e-5, atol=1e-5)
        gate = torch.sigmoid(base.gate.a)
        torch.testing.assert_close(cart, gate * h_in + base.core(h_in, k, v))


def test_residual_gate_is_the_authors_disable_lti(ablations):
    """h = h_in + CoreBlock(h_in): 2 * h_in + delta, not a plain residual."""
    model = ablations["no_lti"]
    g = torch.Generator().manual_seed(6)
    h_in = torch.randn(B, T, SMALL["d_model"], generator=g)
    with torch.no_grad():
        k, v = model.anchor(torch.randn(B, T, SMALL["d_model"], generator=g))
        torch.testing.assert_close(model.loop_step(h_in, k, v), h_in + model.core(h_in, k, v))


@pytest.mark.parametrize("name", ["base", "unfrozen_kv", "self_attn_core", "contractive"])
def test_a_later_token_never_changes_earlier_logits(ablations, idx, name):
    """Causality end to end: the core's cross-attention to the anchor must be causal too."""
    changed = idx.clone()
    changed[:, T // 2] = (changed[:, T // 2] + 1) % SMALL["vocab_size"]
    with torch.no_grad():
        a, _ = ablations[name](idx)
        b, _ = ablations[name](changed)
    torch.testing.assert_close(a[:, : T // 2], b[:, : T // 2], rtol=0, atol=1e-6)
    assert (a[:, T // 2 :] - b[:, T // 2 :]).abs().max() > 1e-3


def test_loop_stats_report_rho_and_the_blend_at_init(tmp_path):
    _, module = compile_variant(tmp_path, "stats")
    stats = module.Model().loop_stats()
    assert stats["rho"] == pytest.approx(0.9, abs=1e-6)
    assert stats["mix"] == pytest.approx(torch.softmax(torch.tensor([1.0, 0.0, 0.0]), 0).tolist())


# ----------------------------------------------------------------------------- 3. weight sharing


def test_tied_head_is_no_module_and_reads_the_embedding_table(ablations, idx):
    model = ablations["base"]
    V, d = SMALL["vocab_size"], SMALL["d_model"]
    assert not hasattr(model, "head")
    assert [n for n, p in model.named_parameters() if p.shape == (V, d)] == ["embedding.weight"]
    unused = next(t for t in range(V) if t not in idx)  # changes the head only, not the input
    with torch.no_grad():
        before, _ = model(idx)
        model.embedding.weight[unused] += 1.0
        after, _ = model(idx)
        model.embedding.weight[unused] -= 1.0
    assert (after[..., unused] - before[..., unused]).abs().min() > 0
    others = [t for t in range(V) if t != unused]
    torch.testing.assert_close(after[..., others], before[..., others], rtol=0, atol=0)


def test_shared_core_is_one_module_called_by_every_loop(ablations, idx):
    model = ablations["base"]
    assert isinstance(model.core, torch.nn.Module) and not isinstance(model.core, torch.nn.ModuleList)
    calls = []
    handle = model.core.register_forward_hook(lambda mod, *_: calls.append(mod))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        handle.remove()
    assert len(calls) == SMALL["n_loops"] and all(c is model.core for c in calls)


def test_unshared_core_blocks_are_distinct_tensors(ablations):
    core = ablations["unshared_core"].core
    pointers = {block.attn.q_proj.weight.data_ptr() for block in core}
    assert len(pointers) == SMALL["n_loops"]
    assert core[0].ffn.up_proj.weight is not core[1].ffn.up_proj.weight


ALBERT = """\
name: cart_albert
extends: {base}
share:
  - name: albert
    members: ["prelude.*"]
"""


def prelude_tensors_shared(model) -> bool:
    first, second = model.prelude
    return (
        first is second
        and first.attn.q_proj.weight is second.attn.q_proj.weight
        and first.ffn_norm.weight is second.ffn_norm.weight
    )


def test_albert_share_group_makes_prelude_layers_one_set_of_tensors(tmp_path):
    spec = tmp_path / "albert.yaml"
    spec.write_text(ALBERT.format(base=CART_TINY.as_posix()))
    resolved = resolve(spec)
    module, _ = compiled_module(resolved, tmp_path / "out")
    report = account(resolved.graph)

    torch.manual_seed(0)
    model = module.Model()
    assert prelude_tensors_shared(model)  # after build
    assert sum(p.numel() for p in model.parameters()) == report.stored
    layer = next(g for g in report.groups if g.name == "albert")
    assert layer.members == ["prelude.0", "prelude.1"] and layer.uses == 2
    assert report.stored == account(resolve(CART_TINY).graph).stored - layer.stored

    model.init_weights()
    assert prelude_tensors_shared(model)  # after init_weights
    idx = tokens(1, 8, resolved.spec.model.vocab_size)
    assert count_parameter_uses(model, idx) == report.effective

    torch.manual_seed(1)
    fresh = module.Model()
    fresh.load_state_dict(model.state_dict())
    assert prelude_tensors_shared(fresh)  # after a state_dict round trip
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_share_group_across_blocks_ties_the_prelude_layer_to_the_coda_layer(variants):
    _, module = variants["share_prelude_with_coda"]
    model = module.Model()
    assert model.prelude[1] is model.coda[0]
    assert model.prelude[0] is not model.prelude[1]
    assert model.prelude[1].attn.kv_down.weight is model.coda[0].attn.kv_down.weight


def test_share_group_over_unshared_core_loops_ties_exactly_those_loops(variants):
    _, module = variants["share_unshared_core_loops"]
    core = module.Model().core
    assert core[0] is core[2] and core[1] is not core[0]


# ----------------------------------------------------------------------------- 4. torch.compile


def test_torch_compile_fullgraph_runs_forward_and_backward_in_one_frame(ablations, idx):
    """No graph break (fullgraph=True raises on one) and no recompilation per loop or per call."""
    from torch._dynamo.testing import CompileCounterWithBackend

    model = ablations["base"]
    targets = tokens(B, T, SMALL["vocab_size"], seed=12)
    model.zero_grad(set_to_none=True)
    _, loss = model(idx, targets)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    try:
        logits, compiled_loss = compiled(idx, targets)
        compiled_loss.backward()
        assert counter.frame_count == 1  # the R loops are one graph, not one per loop index
        torch.testing.assert_close(compiled_loss, loss)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-5, msg=n)
        compiled(tokens(B, T, SMALL["vocab_size"], seed=11), targets.flip(0))  # same shapes, new values
        assert counter.frame_count == 1
    finally:
        model.zero_grad(set_to_none=True)
        torch._dynamo.reset()


# ----------------------------------------------------------------------------- 5. checkpointing


@pytest.mark.parametrize("name", ["base", "unshared_core", "unfrozen_kv", "contractive"])
def test_per_loop_checkpointing_gives_the_same_gradients(ablations, idx, name):
    model = ablations[name]
    blocks = list(model.core) if isinstance(model.core, torch.nn.ModuleList) else [model.core]
    calls = [0]
    handles = [b.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for b in blocks]
    grads = []
    try:
        for flag in (False, True):
            model.checkpoint_loops = flag
            model.zero_grad(set_to_none=True)
            calls[0] = 0
            model(idx, idx)[1].backward()
            # with checkpointing the core runs again in backward: R calls become 2R
            assert calls[0] == SMALL["n_loops"] * (2 if flag else 1)
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    finally:
        model.checkpoint_loops = False
        model.zero_grad(set_to_none=True)
        for h in handles:
            h.remove()
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys()
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=0, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------- 6. FLOPs


@cache
def flop_gap(spec: str) -> tuple[int, int, float]:
    """(counted by FlopCounterMode at max_seq_len, accounted forward + head, relative gap)."""
    resolved, report, module = shipped(spec)
    # on the meta device for every spec: there SDPA decomposes into matmuls FlopCounterMode counts
    # (the CPU's fused SDPA kernel is not counted at all)
    model = shipped_model(spec) if device_for(spec) == "meta" else build(module, "meta")
    idx = tokens(1, resolved.spec.model.max_seq_len, resolved.spec.model.vocab_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx)
    counted = counter.get_total_flops()
    accounted = report.flops.forward_per_sequence + report.flops.head_per_sequence
    return counted, accounted, (counted - accounted) / accounted


@pytest.mark.parametrize("spec", SHIPPED)
def test_flop_counter_agrees_with_the_accounting(spec):
    counted, accounted, gap = flop_gap(spec)
    assert abs(gap) < 0.005, f"{spec}: FlopCounterMode {counted:,} vs accounting {accounted:,} ({gap:+.3%})"


def test_flop_gaps_reported_per_spec():
    rows = {spec: flop_gap(spec)[2] for spec in SHIPPED}
    worst = max(rows, key=lambda s: abs(rows[s]))
    table = "\n".join(f"  {spec:40s} {gap:+.4%}" for spec, gap in rows.items())
    print(textwrap.dedent(f"\nFlopCounterMode vs accounting (forward + head, T = max_seq_len):\n{table}"))
    print(f"worst: {worst} {rows[worst]:+.4%}")
    assert abs(rows[worst]) < 0.005
