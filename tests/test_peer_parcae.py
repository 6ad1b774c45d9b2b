"""Parcae (sandyresearch/parcae) and its registry's GPT baselines as specs, exact to Parcae's code.

1. ``cartspec params --json`` through the real CLI gives the stored count of Parcae's own model for
   every shipped spec (counted by instantiating parcae_lm on the meta device), and Parcae's own
   unrolled count ("core only": stored - core + R x core) for the looped ones.
2. The generated model has exactly that many parameters on the meta device.
3. FlopCounterMode on the generated model agrees with the reported forward FLOPs within 0.5%.
4. At a tiny size, the generated model's logits equal those of ``tests/reference/parcae.py`` (a
   hand-written Parcae forward over Parcae's parameter names) with the weights copied across, in
   float32 to 1e-5, the random initial state included (both drawn under one seed).
"""

from __future__ import annotations

import json
import re
from functools import cache

import pytest
import torch
from gen_helpers import ROOT, build, randomize_, shipped, tokens
from reference import parcae as reference
from test_generated_models import flop_gap

from cartspec.resolve import resolve
from cartspec.runtime.generated import compiled_module

PEERS = ROOT / "specs" / "peers"

# spec -> (stored, Parcae's unrolled count at R = 8 or None), from parcae_lm at dee8363 on the meta
# device (parcae_lm/configs/parcae/*.py, parcae_lm/configs/gpt/*.py)
PARCAE_COUNTS = {
    "parcae_small": (144_323_136, 243_436_416),
    "parcae_medium": (388_003_328, 740_385_792),
    "parcae_large": (776_655_680, 1_602_523_520),
    "parcae_xlarge": (1_338_591_744, 2_924_221_440),
    "parcae_gpt_small": (143_141_184, None),
    "parcae_gpt_medium": (385_903_104, None),
    "parcae_gpt_large": (773_375_040, None),
    "parcae_gpt_xlarge": (1_333_868_544, None),
}


@cache
def report(name: str) -> dict:
    """``cartspec params --json`` of a shipped Parcae spec, from a real process."""
    from conftest import run_cli_process

    rc, out, err = run_cli_process("params", "--json", f"specs/peers/{name}.yaml")
    assert (rc, err) == (0, ""), err
    return json.loads(out)


@pytest.mark.parametrize("name", PARCAE_COUNTS)
def test_params_reports_parcaes_own_stored_and_unrolled_counts(name):
    stored, unrolled = PARCAE_COUNTS[name]
    r = report(name)
    assert r["stored"] == stored
    if unrolled is not None:
        assert r["unrolled"]["core_only"] == unrolled


@pytest.mark.parametrize("name", PARCAE_COUNTS)
def test_generated_model_on_meta_has_parcaes_count_and_flops_within_half_a_percent(name):
    _, _, module = shipped(f"specs/peers/{name}.yaml")
    assert sum(p.numel() for p in build(module, "meta").parameters()) == PARCAE_COUNTS[name][0]
    counted, accounted, gap = flop_gap(f"specs/peers/{name}.yaml")
    assert abs(gap) < 0.005, f"{name}: FlopCounterMode {counted:,} vs accounting {accounted:,} ({gap:+.3%})"


# ----------------------------------------------------------------------------- logits at a tiny size

TINY = (
    "model.vocab_size=128",
    "model.d_model=64",
    "model.head_dim=32",
    "model.max_seq_len=16",
    "train.seq_len=16",
)
# Parcae draws a fresh initial state at evaluation too: the shipped seed (a fixed start for
# reproducible evaluation) is lifted so both forwards draw from torch's global RNG
TINY_LOOPED = (
    "blocks.core.init_state.seed=null",
    *TINY,
    "blocks.prelude.layers=2",
    "blocks.core.layers=2",
    "blocks.coda.layers=2",
    "blocks.core.loops=3",
)
TINY_GPT = (*TINY, "blocks.stack.layers=3", "blocks.stack.value_embedding.layers=[0, 2]")

# generated name -> Parcae's name, for the weights of one block
BLOCK_NAMES = {
    "attn_norm.weight": "norm_1.weight",
    "attn.q_proj.weight": "attn.c_q.weight",
    "attn.k_proj.weight": "attn.c_k.weight",
    "attn.v_proj.weight": "attn.c_v.weight",
    "attn.o_proj.weight": "attn.c_proj.weight",
    "attn.value_gate.weight": "attn.ve_gate.weight",
    "ffn_norm.weight": "norm_2.weight",
    "ffn.fc.weight": "mlp.fc.weight",
    "ffn.proj.weight": "mlp.proj.weight",
}


GLOBAL_NAMES = {
    "embedding.weight": "transformer.wte.weight",
    "prelude_norm.weight": "transformer.ln_prelude.weight",
    "inject.A_log": "transformer.adapter.A_log",
    "inject.dt_bias": "transformer.adapter.dt_bias",
    "inject.B": "transformer.adapter.B",
    "readout.weight": "transformer.C.weight",
    "norm.weight": "transformer.ln_f.weight",
}


def parcae_names(state: dict[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    """The generated model's weights under Parcae's names (the GPT baseline's blocks are
    ``transformer.h.{i}``). Parcae numbers its value-embedding tables over the stack, or over
    prelude, core (once) and coda; a stage's k-th table is that of its k-th listed layer."""
    b = spec.blocks
    if b.stack is not None:
        stages = {"stack": ("transformer.h", 0)}
    else:
        P, n = b.prelude.layers, b.core.layers
        stages = {"prelude": ("transformer.prelude", 0), "core": ("transformer.core_block", P)}
        stages["coda"] = ("transformer.coda", P + n)
    out: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        if m := re.fullmatch(r"(stack|prelude|coda|core\.layers)\.(\d+)\.(.+)", name):
            out[f"{stages[m[1].split('.')[0]][0]}.{m[2]}.{BLOCK_NAMES[m[3]]}"] = w
        elif m := re.fullmatch(r"(stack|prelude|core|coda)_values\.tables\.(\d+)\.weight", name):
            layer = sorted(getattr(b, m[1]).value_embedding.layers)[int(m[2])]
            out[f"value_embeds.{stages[m[1]][1] + layer}.weight"] = w
        else:
            out[GLOBAL_NAMES[name]] = w
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """label -> (resolved spec, generated model in eval mode with O(1) weights)."""
    out = tmp_path_factory.mktemp("parcae_tiny")
    built = {}
    for label, spec, sets in (
        ("parcae", "parcae_small", TINY_LOOPED),
        ("gpt", "parcae_gpt_small", TINY_GPT),
    ):
        resolved = resolve(PEERS / f"{spec}.yaml", list(sets))
        module, _ = compiled_module(resolved, out, f"{label}.py")
        built[label] = (resolved, randomize_(build(module), seed=7).eval())
    return built


def shape_of(spec) -> reference.ParcaeShape:
    b, m = spec.blocks, spec.model
    heads = m.d_model // m.head_dim
    if b.stack is not None:
        return reference.ParcaeShape(heads, heads, 0, 0, 0, 0, eps=m.norm.eps)
    return reference.ParcaeShape(
        heads, heads, b.prelude.layers, b.core.layers, b.coda.layers, b.core.loops, eps=m.norm.eps
    )


def test_generated_parcae_logits_equal_the_reference_with_the_seeded_initial_state(tiny):
    resolved, model = tiny["parcae"]
    spec = resolved.spec
    weights = parcae_names(model.state_dict(), spec)
    idx = tokens(2, 16, spec.model.vocab_size, seed=3)
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            logits, _ = model(idx)
        torch.manual_seed(seed)
        expected = reference.forward(weights, shape_of(spec), idx)
        assert expected.abs().max() > 1  # weights at a scale where a wrong path shows
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    torch.manual_seed(5)
    with torch.no_grad():
        other, _ = model(idx)
    assert (other - logits).abs().max() > 1e-4  # another draw of the initial state moves the logits


def test_generated_gpt_baseline_logits_equal_the_reference(tiny):
    resolved, model = tiny["gpt"]
    spec = resolved.spec
    weights = parcae_names(model.state_dict(), spec)
    idx = tokens(2, 16, spec.model.vocab_size, seed=4)
    with torch.no_grad():
        logits, _ = model(idx)
    expected = reference.gpt_forward(weights, shape_of(spec), spec.blocks.stack.layers, idx)
    assert expected.abs().max() > 1
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_the_diagonal_injection_starts_where_parcae_starts_it(tiny):
    """A = exp(A_log) = 1, a step whose decay exp(-step A) is sqrt(1/5), and B = I (init_weights)."""
    _, model = tiny["parcae"]
    inject = type(model.inject)(model.config.d_model)
    inject.reset_parameters()
    step = torch.nn.functional.softplus(inject.dt_bias.detach())
    torch.testing.assert_close(
        torch.exp(-step * torch.exp(inject.A_log.detach())), torch.full((64,), 0.2**0.5)
    )
    torch.testing.assert_close(inject.B.detach(), torch.eye(64), rtol=0, atol=0)
