"""OpenMythos (kyegomez/OpenMythos) as specs: its counts, its generated models and its numerics.

1. ``cartspec params --json`` through the real CLI gives, for every shipped OpenMythos spec, the count
   of the peer's own code (``sum(p.numel() for p in model.parameters())``, measured on the meta device),
   the parameters active per token, and OpenMythos's unrolled convention (the whole recurrent block x L).
2. Each generated model holds exactly that many parameters on the meta device.
3. FlopCounterMode agrees with the reported forward FLOPs within 0.5%. Routing is data dependent: on the
   meta device the mixture runs each token through top_k experts without choosing them (the FLOPs do not
   depend on the choice); with real tensors it routes, and a real-size example checks that path too.
4. At a tiny size, with weights copied into the hand-written reference (tests/reference/openmythos.py),
   the logits agree within 1e-5 in float32.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from gen_helpers import ROOT, build, compile_variant, randomize_, shipped, tokens
from reference.openmythos import MythosReference, MythosReferenceConfig, load_generated
from test_accounting import params
from torch.utils.flop_counter import FlopCounterMode

PEERS = ROOT / "specs" / "peers"

# spec -> (stored, active per token, unrolled at L = loops in OpenMythos's convention), each measured by
# instantiating the peer's own code on the meta device (example.py's two configs, variants.py)
COUNTS = {
    "openmythos_example": (1_538_626, 1_243_714, 3_294_664),
    "openmythos_example_gqa": (1_771_810, 1_476_898, 3_761_032),
    "openmythos_1b": (1_064_028_034, 309_053_314, 14_731_922_464),
    "openmythos_3b": (3_041_725_186, 776_801_026, 44_037_000_736),
}


def spec_path(name: str) -> str:
    return f"specs/peers/{name}.yaml"


# ----------------------------------------------------------------------------- 1. counts through the CLI


@pytest.mark.parametrize("name", COUNTS)
def test_params_gives_the_peers_own_counts(cli, name):
    stored, active, unrolled = COUNTS[name]
    report = params(cli, PEERS / f"{name}.yaml")
    assert (report["stored"], report["active"]) == (stored, active)
    assert report["unrolled"]["recurrent_block"] == unrolled


def test_example_unrolled_at_four_loops_is_the_peers_figure(cli):
    report = params(cli, PEERS / "openmythos_example.yaml", "blocks.core.loops=4")
    assert report["unrolled"]["recurrent_block"] == 3_294_664


def test_active_equals_stored_without_a_mixture_of_experts(cli):
    report = params(cli, PEERS / "openmythos_example.yaml", "blocks.core.ffn=null")
    assert report["active"] == report["stored"]


def test_console_report_prints_the_active_parameters(cli):
    rc, out, err = cli("params", str(PEERS / "openmythos_1b.yaml"))
    assert rc == 0, err
    assert "309,053,314" in out and "active" in out


# ----------------------------------------------------------------------------- 2. generated parameters


@cache
def meta_model(name: str) -> torch.nn.Module:
    return build(shipped(spec_path(name))[2], "meta")


@pytest.mark.parametrize("name", COUNTS)
def test_generated_model_on_meta_has_the_peers_count(name):
    assert sum(p.numel() for p in meta_model(name).parameters()) == COUNTS[name][0]


# ----------------------------------------------------------------------------- 3. FLOPs


def counted_flops(model: torch.nn.Module, idx: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx, loops=model.config.loops)  # an explicit count: every loop runs
    return counter.get_total_flops()


def accounted_flops(name: str, *sets: str) -> int:
    report = shipped(spec_path(name))[1]
    return report.flops.forward_per_sequence + report.flops.head_per_sequence


@pytest.mark.parametrize("name", COUNTS)
def test_flops_on_meta_agree_with_the_accounting(name):
    resolved = shipped(spec_path(name))[0]
    m = resolved.spec.model
    counted = counted_flops(meta_model(name), tokens(1, m.max_seq_len, m.vocab_size, device="meta"))
    accounted = accounted_flops(name)
    assert abs(counted - accounted) / accounted < 0.005, (counted, accounted)


@pytest.mark.parametrize("name", ["openmythos_example", "openmythos_example_gqa"])
def test_routed_flops_with_real_tensors_agree_with_the_accounting(name):
    """The example at its real size on the CPU: tokens really routed, each through its top_k experts."""
    resolved, report, module = shipped(spec_path(name))
    m = resolved.spec.model
    model = randomize_(build(module), seed=1)
    with math_attention():
        counted = counted_flops(model, tokens(1, m.max_seq_len, m.vocab_size, seed=2))
    accounted = report.flops.forward_per_sequence + report.flops.head_per_sequence
    assert abs(counted - accounted) / accounted < 0.005, (counted, accounted)


def math_attention():
    """SDPA through its math kernel: FlopCounterMode has no formula for the CPU flash kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


# ----------------------------------------------------------------------------- 4. logits against the reference

B, T = 2, 16
TINY = (  # d = 64 (4 heads, a loop signal in 8 channels), 4 experts of width 16 (top 2), LoRA rank 4 over 3 rows
    "model.vocab_size=97",
    "model.d_model=64",
    "model.head_dim=16",
    "model.max_seq_len=32",
    "model.ffn.hidden=85",
    "train.seq_len=32",
    "blocks.core.loops=3",
    *(f"blocks.core.ffn.{k}" for k in ("experts=4", "top_k=2", "shared=1", "hidden=16")),
    "blocks.core.lora.rank=4",
    "blocks.core.lora.max_loops=3",
)
TINY_MLA = tuple(
    f"blocks.{block}.attention.{size}"
    for block in ("prelude", "core", "coda")
    for size in ("q_rank=24", "kv_rank=12", "nope_dim=6", "rope_dim=8", "v_dim=10")
)
CASES = {
    "mla": (
        "openmythos_example",
        TINY_MLA,
        dict(kv_lora_rank=12, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=6, v_head_dim=10),
    ),
    "gqa": ("openmythos_example_gqa", (), dict(attn_type="gqa", n_kv_heads=2)),
    "mla_two_shared_experts_two_layers": (
        "openmythos_example",
        (*TINY_MLA, "blocks.core.ffn.shared=2", "blocks.prelude.layers=2", "blocks.coda.layers=2"),
        dict(kv_lora_rank=12, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=6, v_head_dim=10),
    ),
}


def reference_config(resolved, **attention) -> MythosReferenceConfig:
    spec = resolved.spec
    m, core = spec.model, spec.blocks.core
    return MythosReferenceConfig(
        vocab_size=m.vocab_size,
        dim=m.d_model,
        n_heads=m.n_heads,
        max_loop_iters=core.lora.max_loops,
        prelude_layers=spec.blocks.prelude.layers,
        coda_layers=spec.blocks.coda.layers,
        n_experts=core.ffn.experts,
        n_shared_experts=core.ffn.shared,
        n_experts_per_tok=core.ffn.top_k,
        expert_dim=core.ffn.hidden,
        lora_rank=core.lora.rank,
        act_threshold=core.halt.threshold,
        **attention,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Each case compiled at the tiny size, weights at O(1) scale, router_bias drawn so it moves the choice."""
    out = tmp_path_factory.mktemp("openmythos")
    models = {}
    for label, (name, sets, attention) in CASES.items():
        resolved, module = compile_variant(
            out, label, (*TINY, *sets), spec=PEERS / f"{name}.yaml", small=False
        )
        model = randomize_(build(module), seed=5).eval()
        with torch.no_grad():
            model.core.ffn.router_bias.copy_(
                torch.randn(model.core.ffn.router_bias.shape, generator=torch.Generator().manual_seed(6))
            )
        reference = MythosReference(reference_config(resolved, **attention)).eval()
        load_generated(reference, model.state_dict())
        models[label] = (model, reference)
    return models


@pytest.mark.parametrize("loops", [1, 3, 5])
@pytest.mark.parametrize("case", CASES)
def test_generated_logits_equal_the_reference(tiny, case, loops):
    """5 loops run past the LoRA table's 3 rows: the last row is reused, as OpenMythos does."""
    model, reference = tiny[case]
    idx = tokens(B, T, 97, seed=7)
    with torch.no_grad():
        logits, _ = model(idx, loops=loops)
        expected = reference(idx, loops)
    assert logits.abs().max() > 1  # weights at a scale where a wrong path shows
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_halting_early_at_inference_changes_nothing(tiny):
    """Without an explicit loop count an eval forward stops once every position has halted (here after the
    second loop: a large halting bias); the weights of halted positions are zero, so the logits are those of
    running every loop, and the reference's."""
    model, reference = tiny["mla"]
    idx = tokens(B, T, 97, seed=8)
    weight, bias = model.halt.proj.weight.clone(), model.halt.proj.bias.clone()
    calls = []
    hook = model.core.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            for halt in (model.halt.proj, reference.recurrent.act.halt):  # p = sigmoid(2) = 0.88 everywhere:
                halt.weight.zero_()  # every position halts at loop 2, with weights 0.88 and 0.12
                halt.bias.fill_(2.0)
            chosen, _ = model(idx)
            stopped_after = len(calls)
            forced, _ = model(idx, loops=model.config.loops)
            expected = reference(idx, model.config.loops)
    finally:
        hook.remove()
        with torch.no_grad():
            for halt in (model.halt.proj, reference.recurrent.act.halt):
                halt.weight.copy_(weight)
                halt.bias.copy_(bias)
    assert stopped_after == 2 and len(calls) == 2 + model.config.loops
    torch.testing.assert_close(chosen, forced, rtol=0, atol=0)
    torch.testing.assert_close(forced, expected, rtol=1e-5, atol=1e-5)


def test_the_routing_and_the_router_bias_matter(tiny):
    """A different router_bias picks other experts: the logits move (the reference agrees on both)."""
    model, reference = tiny["mla"]
    idx = tokens(B, T, 97, seed=9)
    bias = model.core.ffn.router_bias.clone()
    try:
        with torch.no_grad():
            before, _ = model(idx, loops=3)
            model.core.ffn.router_bias.copy_(-bias)
            reference.recurrent.block.ffn.router_bias.copy_(-bias)
            after, _ = model(idx, loops=3)
            torch.testing.assert_close(after, reference(idx, 3), rtol=1e-5, atol=1e-5)
    finally:
        model.core.ffn.router_bias.copy_(bias)
        reference.recurrent.block.ffn.router_bias.copy_(bias)
    assert (before - after).abs().max() > 1e-2


def test_per_sequence_depths_run_each_sequence_at_its_own_loop_count(tiny):
    """The sampled-depth path (loop indices per sequence): the signal, the LoRA row and the halting of each
    sequence follow its own count, as if it ran alone; with truncated backprop too."""
    model, _ = tiny["mla"]
    idx = tokens(B, T, 97, seed=10)
    with torch.no_grad():
        both, _ = model(idx, depths=torch.tensor([2, 5]), grad_loops=2)
        alone = [model(idx[i : i + 1], loops=n)[0][0] for i, n in enumerate((2, 5))]
    for i in range(B):
        torch.testing.assert_close(both[i], alone[i], rtol=1e-5, atol=1e-5)
