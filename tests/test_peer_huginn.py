"""Huginn-0125 (seal-rg/recurrent-pretraining) as a cartspec spec, held to Huginn's own code.

- ``cartspec params`` through the real CLI gives the count of Huginn's release code (3,564,976,800
  stored, every part as Huginn's modules hold it) and Huginn's own unrolled count at its mean
  recurrence of 32, where only the core block counts per loop (the adapter is static):
  52,594,338,720, beside its depth schedule (poisson_lognormal, mean 32, backprop 8).
- The generated model holds exactly that many parameters on the meta device, and FlopCounterMode
  on it agrees with the reported forward FLOPs; its count equals that of Huginn's own model,
  measured once with FlopCounterMode on the meta device (T = 4096, 32 steps): 491,750,267,289,600.
- At a tiny size, the generated model's weights copied into a hand-written reference of Huginn's
  forward (tests/reference/huginn.py, in Huginn's own parameter names) give the same logits, the
  random initial state included, under a seed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from gen_helpers import ROOT, build, randomize_, tokens
from reference import huginn
from torch.utils.flop_counter import FlopCounterMode

from cartspec.accounting import account
from cartspec.resolve import resolve
from cartspec.runtime.generated import compiled_module, import_module

SPEC = "specs/peers/huginn_0125.yaml"
STORED = 3_564_976_800
CORE_ONLY_AT_32 = 52_594_338_720
HUGINN_FORWARD_FLOPS = 491_750_267_289_600  # Huginn's RavenForCausalLM, FlopCounterMode, T=4096, 32 steps
PARTS = {  # Huginn's modules, counted from its code
    "embedding": 346_030_080,  # wte, tied to lm_head
    "prelude": 790_796_160,
    "core": 1_581_592_320,  # core_block: 4 sandwich blocks
    "coda": 790_796_160,
}
ADAPTER = 55_756_800  # Linear(2d -> d) on [state, e]
LN_F = 5_280  # one norm, used after the loop and before the head


@pytest.fixture(scope="module")
def report(run_cli) -> dict:
    rc, out, err = run_cli("params", "--json", SPEC)
    assert (rc, err) == (0, "")
    return json.loads(out)


def test_params_gives_the_stored_count_of_huginns_code(report):
    assert report["stored"] == STORED
    blocks = {b["name"]: b["stored"] for b in report["blocks"]}
    assert {name: blocks[name] for name in PARTS} == PARTS
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["ln_f"]["stored"] == LN_F and groups["ln_f"]["uses"] == 2
    assert report["stored"] == sum(PARTS.values()) + ADAPTER + LN_F


def test_params_gives_huginns_unrolled_count_core_only(report):
    assert report["unrolled"]["core_only"] == CORE_ONLY_AT_32
    assert report["unrolled"]["core_only"] == STORED + 31 * PARTS["core"]


def test_params_reports_huginns_depth_schedule(report):
    depth = report["depth"]
    assert (depth["kind"], depth["per"], depth["backprop"]) == ("poisson_lognormal", "step", 8)
    # p = Poisson(tau) + 1 with E[tau] = 32: Huginn's sampler runs 33 loops on average
    assert depth["mean_depth"] == pytest.approx(33, abs=0.01)


@pytest.fixture(scope="module")
def meta_model():
    module = import_module(ROOT / "generated" / "huginn_0125.py")
    return build(module, "meta")


def test_the_generated_model_holds_exactly_the_stored_count_on_the_meta_device(meta_model):
    assert sum(p.numel() for p in meta_model.parameters()) == STORED
    assert meta_model.norm is meta_model.core_out_norm  # ln_f: one module, two uses


def test_flop_counter_agrees_with_the_report_and_with_huginns_own_model(meta_model, report):
    T = report["flops"]["seq_len"]
    idx = torch.zeros(1, T, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(idx)
    counted = counter.get_total_flops()
    accounted = report["flops"]["forward_per_sequence"] + report["flops"]["head_per_sequence"]
    assert abs(counted - accounted) / accounted < 0.005, (counted, accounted)
    assert counted == HUGINN_FORWARD_FLOPS


# ----------------------------------------------------------------------------- logits at a tiny size

TINY = {"vocab_size": 128, "d_model": 64, "n_heads": 4, "ffn_hidden": 96}
TINY_SETS = (
    "model.vocab_size=128",
    "model.d_model=64",
    "model.head_dim=16",
    "model.max_seq_len=32",
    "model.ffn.hidden=96",
    "train.seq_len=32",
    "train.micro_batch=2",
    "blocks.core.loops=4",
)


def _huginn_names(cfg: huginn.HuginnConfig) -> dict[str, str]:
    """Every generated parameter name -> Huginn's name for it."""
    layer = {
        "attn_norm.weight": "norm_1.weight",
        "attn.qkv.weight": "attn.Wqkv.weight",
        "attn.qk_bias": "attn.qk_bias",
        "attn.o_proj.weight": "attn.proj.weight",
        "attn_out_norm.weight": "norm_2.weight",
        "ffn_norm.weight": "norm_3.weight",
        "ffn.gate_up.weight": "mlp.fc.weight",
        "ffn.down_proj.weight": "mlp.proj.weight",
        "ffn_out_norm.weight": "norm_4.weight",
    }
    names = {
        "embedding.weight": "transformer.wte.weight",
        "inject.adapter.weight": "transformer.adapter.weight",
        "core_out_norm.weight": "transformer.ln_f.weight",
        "norm.weight": "transformer.ln_f.weight",
    }
    stages = (
        ("prelude.{}", "transformer.prelude.{}", cfg.prelude_layers),
        ("core.layers.{}", "transformer.core_block.{}", cfg.core_layers),
        ("coda.{}", "transformer.coda.{}", cfg.coda_layers),
    )
    for ours, theirs, count in stages:
        for i in range(count):
            names |= {f"{ours.format(i)}.{a}": f"{theirs.format(i)}.{b}" for a, b in layer.items()}
    return names


def huginn_weights(model: torch.nn.Module, cfg: huginn.HuginnConfig) -> dict[str, torch.Tensor]:
    """The generated model's parameters under Huginn's names; every one must be mapped."""
    params = dict(model.named_parameters(remove_duplicate=False))
    names = _huginn_names(cfg)
    assert params.keys() == names.keys(), sorted(params.keys() ^ names.keys())
    return {names[k]: v.detach() for k, v in params.items()}


def weights_like_huginns_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """O(1) weights (tests/gen_helpers.randomize_), with the output projections scaled down as
    Huginn's init scales them (std / sqrt(2 x effective depth)) and the tied table halved: a random
    32-loop map with O(1) output projections is chaotic, and would blow float32 rounding up past
    any tolerance; this one contracts, and its logits stay of order 1."""
    randomize_(model, seed)
    with torch.no_grad():
        model.embedding.weight.mul_(0.5)
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(0.25)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    resolved = resolve(ROOT / SPEC, list(TINY_SETS))
    module, _ = compiled_module(resolved, tmp_path_factory.mktemp("huginn"), "huginn_tiny.py")
    model = weights_like_huginns_(build(module), seed=3).eval()
    cfg = huginn.HuginnConfig(**TINY)
    assert account(resolved.graph).stored == sum(p.numel() for p in model.parameters())
    return model, cfg


@pytest.mark.parametrize("loops", [1, 4, 32])
def test_logits_equal_huginns_forward_with_the_seeded_random_state(tiny, loops):
    """Both draw the initial state from torch's global RNG, seeded alike before each forward."""
    model, cfg = tiny
    weights = huginn_weights(model, cfg)
    idx = tokens(2, 17, cfg.vocab_size, seed=4)
    torch.manual_seed(11)
    with torch.no_grad():
        logits, _ = model(idx, loops=loops)
    torch.manual_seed(11)
    expected = huginn.forward(weights, cfg, idx, steps=loops)
    assert expected.abs().max() > 1
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_the_random_state_changes_the_logits_and_the_seed_fixes_them(tiny):
    """The initial state is drawn per forward: another seed, other logits; the same seed, the same."""
    model, cfg = tiny
    idx = tokens(2, 17, cfg.vocab_size, seed=4)
    runs = []
    for seed in (11, 12, 11):
        torch.manual_seed(seed)
        with torch.no_grad():
            runs.append(model(idx, loops=2)[0])
    assert torch.equal(runs[0], runs[2])
    assert (runs[0] - runs[1]).abs().max() > 1e-3


def test_the_state_draw_is_huginns_truncated_normal_scaled_by_sqrt_d(tiny):
    """s_0 ~ TruncNormal(0, sqrt(2/(5d)), +-3 std) * sqrt(d), drawn as Huginn draws it (the same numbers
    under one seed): std sqrt(2/5) x 0.9866 (the truncation's) after the scale, nothing beyond 3 sqrt(2/5)."""
    model, cfg = tiny
    e = torch.empty(64, 256, cfg.d_model)
    torch.manual_seed(5)
    state = model.initial_state(e)
    torch.manual_seed(5)
    assert torch.equal(state, huginn.initial_state(e, cfg))
    assert state.abs().max() <= 3 * math.sqrt(2 / 5) + 1e-6
    assert state.std().item() == pytest.approx(math.sqrt(2 / 5) * 0.9866, rel=0.01)
