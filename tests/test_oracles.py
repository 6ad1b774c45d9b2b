"""Every component kind against an independent numeric oracle (tests/oracles.py: plain tensor code
written from the definitions, never the templates or the generated code).

Small variants (d=64, 4 heads of 16, T=16) are compiled into a temporary folder and given weights at
O(1) scale; each kind's generated module must equal its oracle with the same weights, and each whole
model must equal the oracle's whole model. Behaviour the oracle alone would not pin: a later token
changes earlier logits exactly when attention is bidirectional, and permuting query heads within one
K/V group (and the output projection with them) leaves a GQA layer unchanged, across groups not.

``ORACLES`` names the oracle test of every registered kind; a kind without one fails
``test_every_registered_kind_names_its_oracle_test``.
"""

from __future__ import annotations

import typing

import oracles
import pytest
import torch
from gen_helpers import CART_TINY, DENSE_TINY, build, compile_variant, randomize_, tokens

from cartspec.components import kinds
from cartspec.components.anchor import Anchor
from cartspec.components.ffn import FFN
from cartspec.components.moe import MoE
from cartspec.components.norm import Norm

B, T = 2, 16
TOL = {"rtol": 1e-4, "atol": 1e-4}

# label -> (base spec, --set overrides on the small sizes of gen_helpers)
VARIANTS = {
    "dense_mha": (DENSE_TINY, ()),
    "dense_mha_bidirectional": (DENSE_TINY, ("blocks.stack.attention.causal=false",)),
    "dense_gqa": (DENSE_TINY, ("blocks.stack.attention.kv_heads=2",)),
    "dense_gqa_interleaved_rope": (
        DENSE_TINY,
        ("blocks.stack.attention={kind: mha, kv_heads: 2, rope_base: 500.0, rope_style: interleaved}",),
    ),
    "dense_mla_interleaved_rope": (
        DENSE_TINY,
        ("blocks.stack.attention={kind: mla, rope_style: interleaved}",),
    ),
    "dense_mqa_no_rope": (DENSE_TINY, ("blocks.stack.attention={kind: mha, kv_heads: 1, rope: false}",)),
    "dense_deepseek_mla_interleaved_rope": (
        DENSE_TINY,
        (
            "blocks.stack.attention={kind: deepseek_mla, q_rank: 24, kv_rank: 12, nope_dim: 6, rope_dim: 8,"
            " v_dim: 10, rope_base: 500.0, rope_style: interleaved}",
        ),
    ),
    "dense_deepseek_mla_bidirectional_no_rope": (
        DENSE_TINY,
        (
            "blocks.stack.attention={kind: deepseek_mla, q_rank: 16, kv_rank: 20, nope_dim: 12, rope_dim: 4,"
            " v_dim: 16, rope: false, causal: false}",
        ),
    ),
    "dense_gqa_bidirectional_gelu_layernorm_untied": (
        DENSE_TINY,
        (
            "blocks.stack.attention={kind: mha, kv_heads: 2, causal: false, rope_base: 500.0}",
            "model.ffn.kind=gelu",
            "model.norm={kind: layernorm, eps: 1.0e-5}",
            "model.tie_embeddings=false",
        ),
    ),
    "dense_gqa_qk_norm": (DENSE_TINY, ("blocks.stack.attention={kind: mha, kv_heads: 2, qk_norm: true}",)),
    "dense_mqa_no_rope_qk_norm": (
        DENSE_TINY,
        ("blocks.stack.attention={kind: mha, kv_heads: 1, rope: false, qk_norm: true}",),
    ),
    "dense_values_gqa": (
        DENSE_TINY,
        (
            "blocks.stack.output_norm=true",
            "blocks.stack.attention={kind: mha, kv_heads: 2, qk_norm: true}",
            "blocks.stack.value_embedding={kind: gated, layers: [1], gate_channels: 8}",
        ),
    ),
    "self_attn_core_values": (
        CART_TINY,
        (
            "blocks.anchor=null",
            "blocks.prelude.output_norm=true",
            "blocks.coda.output_norm=true",
            "blocks.prelude.attention={kind: mha}",
            "blocks.prelude.value_embedding={kind: gated, layers: [0, 1], gate_channels: 16}",
            "blocks.core.layers=2",
            "blocks.core.attention={kind: mha, kv_heads: 2}",
            "blocks.core.value_embedding={kind: gated, layers: [1]}",
            "blocks.coda.attention={kind: mha, qk_norm: true}",
            "blocks.coda.value_embedding={kind: gated, layers: [0]}",
            "blocks.core.readout={kind: linear}",
            "blocks.core.inject={kind: diagonal}",
            "blocks.core.init_state={kind: trunc_normal, seed: 5}",
        ),
    ),
    "add_inject_zero_start": (
        CART_TINY,
        ("blocks.core.inject={kind: add}", "blocks.core.init_state={kind: zeros}"),
    ),
    # OpenMythos's inject with a norm of its own (a layernorm here: its bias is read too)
    "add_norm_inject": (
        CART_TINY,
        ("blocks.core.inject={kind: add_norm, norm: {kind: layernorm, eps: 1.0e-5}}",),
    ),
    "dense_relu2": (DENSE_TINY, ("model.ffn={kind: relu2, scale: 0.5}",)),
    "dense_relu2_hidden": (DENSE_TINY, ("model.ffn={kind: relu2, hidden: 40}",)),
    "dense_mla_latent": (DENSE_TINY, ("blocks.stack.attention={kind: mla, kv_latent: 8}",)),
    "dense_mla_bidirectional_no_rope": (
        DENSE_TINY,
        ("blocks.stack.attention={kind: mla, rope: false, causal: false}",),
    ),
    "cart": (CART_TINY, ()),
    "cart_contractive": (CART_TINY, ("blocks.core.gate.form=contractive",)),
    "core_two_layers": (CART_TINY, ("blocks.core.layers=2",)),
    "core_two_layers_contractive": (
        CART_TINY,
        ("blocks.core.layers=2", "blocks.core.gate.form=contractive"),
    ),
    "residual_gate": (
        CART_TINY,
        (
            "blocks.core.gate={kind: residual}",
            "blocks.core.state_mix=null",
            "blocks.core.loop_embedding=null",
        ),
    ),
    "no_gate_two_taps": (
        CART_TINY,
        ("blocks.core.gate=null", "blocks.core.state_mix={kind: hyper, taps: 2, init: [0.3, -0.2]}"),
    ),
    "cross_bidirectional": (CART_TINY, ("blocks.core.attention.causal=false",)),
    "anchor_kv_gqa": (CART_TINY, ("blocks.anchor={kind: kv, kv_heads: 2}",)),
    "anchor_kv_full_from_embedding": (CART_TINY, ("blocks.anchor={kind: kv, from: embedding}",)),
    "anchor_mla_kv_from_embedding": (
        CART_TINY,
        ("blocks.anchor.from=embedding", "blocks.anchor.kv_latent=8"),
    ),
    "unfrozen_kv": (CART_TINY, ("blocks.anchor.recompute=every_loop",)),
    "unshared_core": (CART_TINY, ("blocks.core.shared=false",)),
    "self_attn_core_gqa_two_layers": (
        CART_TINY,
        (
            "blocks.anchor=null",
            "blocks.core.layers=2",
            "blocks.core.attention={kind: mha, kv_heads: 2}",
            "blocks.core.gate.form=contractive",
        ),
    ),
    "self_attn_core_mla_bidirectional": (
        CART_TINY,
        ("blocks.anchor=null", "blocks.core.attention={kind: mla, causal: false, rope: false}"),
    ),
    "mha_prelude_bidirectional_coda": (
        CART_TINY,
        (
            "blocks.prelude.attention={kind: mha, rope: false}",
            "blocks.coda.attention.causal=false",
            "blocks.core.loop_embedding={kind: sinusoidal, dim: 6, max_loops: 5}",
        ),
    ),
    "layernorm_gelu_untied": (
        CART_TINY,
        ("model.norm.kind=layernorm", "model.ffn.kind=gelu", "model.tie_embeddings=false"),
    ),
    "decay_gate_channel_signal": (  # 64 // 7 = 9 signal channels: an odd width drops the last cosine
        CART_TINY,
        (
            "blocks.core.gate={kind: decay, b_init: 0.3}",
            "blocks.core.loop_embedding={kind: channels, fraction: 7}",
        ),
    ),
    # Huginn's layer: fused qkv with qk_bias, fused swiglu, sandwich norms, embeddings x sqrt(d)
    "dense_huginn_layer": (
        DENSE_TINY,
        (
            "blocks.stack.attention={kind: mha, fused_qkv: true, qk_bias: true}",
            "model.ffn.fused=true",
            "model.norm.placement=sandwich",
            "model.embedding_scale=sqrt_d",
        ),
    ),
    # Huginn's loop: a noisy start, re-reading e through the concat adapter, no anchor
    "huginn_loop": (
        CART_TINY,
        (
            "blocks.anchor=null",
            "blocks.core={loops: 3, layers: 2, attention: {kind: mha, fused_qkv: true, qk_bias: true}}",
            "blocks.core.norm_placement=sandwich",
            "blocks.core.inject={kind: concat}",
            "blocks.core.init_state={kind: trunc_normal, scale: sqrt_d, seed: 5}",
            "blocks.core.out_norm=true",
            "share=[{name: ln_f, members: [core_out_norm, norm]}]",
        ),
    ),
    # OpenMythos's loop: norm(h + signal + e), a mixture of experts, a LoRA shorter than the loop, ACT
    "mythos_loop": (
        CART_TINY,
        (
            "blocks.anchor=null",
            "blocks.core={loops: 3, attention: {kind: mha, kv_heads: 2}}",
            "blocks.core.ffn={kind: moe, experts: 4, top_k: 2, shared: 1, hidden: 16}",
            "blocks.core.loop_embedding={kind: channels}",
            "blocks.core.inject={kind: add_norm}",
            "blocks.core.lora={kind: per_loop, rank: 4, max_loops: 2}",
            "blocks.core.gate={kind: decay}",
            "blocks.core.halt={kind: act, threshold: 0.9}",
        ),
    ),
    "sandwich_core_out_norm_shared": (
        CART_TINY,
        (
            "blocks.core.norm_placement=sandwich",
            "blocks.core.out_norm=true",
            "share=[{name: ln_f, members: [core_out_norm, norm]}]",
        ),
    ),
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """label -> (spec data, generated model with O(1) weights, eval mode), compiled once."""
    out = tmp_path_factory.mktemp("oracle_variants")
    built = {}
    for i, (label, (spec, sets)) in enumerate(VARIANTS.items()):
        resolved, module = compile_variant(out, label, sets, spec)
        built[label] = (resolved.loaded.data, randomize_(build(module), seed=100 + i).eval())
    return built


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def activations(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.state_dict().items()}


def same(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert expected.abs().max() > 0.5, "outputs too small for the comparison to mean anything"
    torch.testing.assert_close(got, expected, **TOL)


def n_heads(spec: dict) -> int:
    return spec["model"]["d_model"] // spec["model"]["head_dim"]


def attention_spec(spec: dict, block: str) -> dict:
    return {**oracles.ATTENTION_DEFAULTS, **spec["blocks"][block]["attention"]}


# ----------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("label", VARIANTS)
def test_whole_model_equals_the_oracle(variants, label):
    spec, model = variants[label]
    idx = tokens(B, T, spec["model"]["vocab_size"], seed=1)
    with torch.no_grad():
        logits, _ = model(idx)
    expected = oracles.model_logits(spec, model.state_dict(), idx)
    assert expected.abs().max() > 1  # weights at a scale where a wrong path shows
    torch.testing.assert_close(logits, expected, **TOL)


@pytest.mark.parametrize("label", ["cart", "core_two_layers_contractive", "residual_gate", "unfrozen_kv"])
def test_loop_count_override_equals_the_oracle_at_that_count(variants, label):
    spec, model = variants[label]
    idx = tokens(B, T, spec["model"]["vocab_size"], seed=2)
    for loops in (1, spec["blocks"]["core"]["loops"] + 2):
        with torch.no_grad():
            logits, _ = model(idx, loops=loops)
        torch.testing.assert_close(logits, oracles.model_logits(spec, model.state_dict(), idx, loops), **TOL)


# ----------------------------------------------------------------------------- attention kinds


SELF_ATTENTION = {
    "mha": [
        ("dense_mha", "stack"),
        ("dense_mha_bidirectional", "stack"),
        ("dense_gqa", "stack"),
        ("dense_gqa_qk_norm", "stack"),
        ("dense_gqa_interleaved_rope", "stack"),
        ("dense_mqa_no_rope", "stack"),
        ("dense_mqa_no_rope_qk_norm", "stack"),
        ("dense_gqa_bidirectional_gelu_layernorm_untied", "stack"),
        ("mha_prelude_bidirectional_coda", "prelude"),
        ("self_attn_core_gqa_two_layers", "core"),
        ("dense_huginn_layer", "stack"),
    ],
    "mla": [
        ("dense_mla_latent", "stack"),
        ("dense_mla_interleaved_rope", "stack"),
        ("dense_mla_bidirectional_no_rope", "stack"),
        ("cart", "prelude"),
        ("mha_prelude_bidirectional_coda", "coda"),
        ("self_attn_core_mla_bidirectional", "core"),
    ],
}


def _self_attention_module(model, block: str):
    stage = getattr(model, block)
    if isinstance(stage, torch.nn.ModuleList):
        return stage[0].attn
    return stage.layers[0].attn if hasattr(stage, "layers") else stage.attn


def _check_self_attention(variants, kind: str) -> None:
    for label, block in SELF_ATTENTION[kind]:
        spec, model = variants[label]
        a = attention_spec(spec, block)
        assert a["kind"] == kind
        module = _self_attention_module(model, block)
        x = activations(B, T, spec["model"]["d_model"])
        rope = (a["rope_base"], a["rope_style"]) if a["rope"] else None
        args = (x, weights(module), n_heads(spec), rope, a["causal"])
        with torch.no_grad():
            same(module(x), oracles.mha(*args, a["qk_norm"]) if kind == "mha" else oracles.mla(*args))


def test_mha_gqa_mqa_self_attention_equals_the_oracle(variants):
    _check_self_attention(variants, "mha")


def test_latent_kv_self_attention_equals_the_oracle(variants):
    _check_self_attention(variants, "mla")


def test_deepseek_latent_attention_equals_the_oracle(variants):
    for label in ("dense_deepseek_mla_interleaved_rope", "dense_deepseek_mla_bidirectional_no_rope"):
        spec, model = variants[label]
        a = attention_spec(spec, "stack")
        module = model.stack[0].attn
        x = activations(B, T, spec["model"]["d_model"])
        rope = (a["rope_base"], a["rope_style"]) if a["rope"] else None
        with torch.no_grad():
            same(module(x), oracles.deepseek_mla(x, weights(module), n_heads(spec), rope, a["causal"]))


def test_cross_attention_to_the_anchor_equals_the_oracle(variants):
    for label in ("cart", "cross_bidirectional", "anchor_kv_gqa", "core_two_layers"):
        spec, model = variants[label]
        causal = spec["blocks"]["core"]["attention"].get("causal", True)
        d = spec["model"]["d_model"]
        x, e = activations(B, T, d, seed=1), activations(B, T, d, seed=2)
        attn = model.core.attn if spec["blocks"]["core"].get("layers", 1) == 1 else model.core.layers[1].attn
        with torch.no_grad():
            k, v = model.anchor(e)
            same(attn(x, k, v), oracles.cross(x, k, v, weights(attn), n_heads(spec), causal))


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize(
    "label, bidirectional",
    [
        ("dense_mha", False),
        ("dense_mha_bidirectional", True),
        ("dense_gqa", False),
        ("dense_gqa_bidirectional_gelu_layernorm_untied", True),
        ("dense_mla_latent", False),
        ("dense_mla_bidirectional_no_rope", True),
        ("cart", False),
        ("cross_bidirectional", True),
        ("self_attn_core_gqa_two_layers", False),
        ("self_attn_core_mla_bidirectional", True),
        ("mha_prelude_bidirectional_coda", True),
        ("anchor_kv_gqa", False),
    ],
)
def test_a_later_token_changes_earlier_logits_exactly_when_attention_is_bidirectional(
    variants, label, bidirectional
):
    spec, model = variants[label]
    idx = tokens(B, T, spec["model"]["vocab_size"], seed=4)
    changed = idx.clone()
    changed[:, T - 3] = (changed[:, T - 3] + 1) % spec["model"]["vocab_size"]
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    earlier = (a[:, : T - 3] - b[:, : T - 3]).abs().max()
    assert (a[:, T - 3 :] - b[:, T - 3 :]).abs().max() > 1e-3
    if bidirectional:
        assert earlier > 1e-3
    else:
        assert earlier <= 1e-5


def _permute_query_heads(q_proj: torch.Tensor, o_proj: torch.Tensor, order: list[int], head_dim: int):
    """Q rows and O columns of the heads taken in ``order``: the same function if pairing is kept."""
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in order])
    return q_proj[rows], o_proj[:, rows]


@pytest.mark.parametrize("label", ["dense_gqa", "self_attn_core_gqa_two_layers", "anchor_kv_gqa"])
def test_permuting_query_heads_within_a_kv_group_permutes_their_outputs(variants, label):
    """4 query heads, 2 K/V heads: groups {0, 1} and {2, 3}. Swapping heads 0 and 1 (with the
    output projection's columns) is the same function; swapping heads 1 and 2 pairs them with the
    other K/V head and is not."""
    spec, model = variants[label]
    head_dim, d = spec["model"]["head_dim"], spec["model"]["d_model"]
    assert n_heads(spec) == 4
    if label == "anchor_kv_gqa":
        attn = model.core.attn
        with torch.no_grad():
            kv = model.anchor(activations(B, T, d, seed=8))
    else:
        attn = _self_attention_module(model, "stack" if label.startswith("dense") else "core")
        kv = ()
    x = activations(B, T, d, seed=9)
    q0, o0 = attn.q_proj.weight.detach().clone(), attn.o_proj.weight.detach().clone()
    outputs = {}
    try:
        for name, order in {"same": [0, 1, 2, 3], "within": [1, 0, 2, 3], "across": [0, 2, 1, 3]}.items():
            q, o = _permute_query_heads(q0, o0, order, head_dim)
            with torch.no_grad():
                attn.q_proj.weight.copy_(q)
                attn.o_proj.weight.copy_(o)
                outputs[name] = attn(x, *kv)
    finally:
        with torch.no_grad():
            attn.q_proj.weight.copy_(q0)
            attn.o_proj.weight.copy_(o0)
    torch.testing.assert_close(outputs["within"], outputs["same"], rtol=1e-5, atol=1e-5)
    assert (outputs["across"] - outputs["same"]).abs().max() > 1e-2


# ----------------------------------------------------------------------------- anchors, FFNs, norms


def test_latent_anchor_equals_the_oracle(variants):
    for label in ("cart", "anchor_mla_kv_from_embedding"):
        spec, model = variants[label]
        x = activations(B, T, spec["model"]["d_model"], seed=3)
        with torch.no_grad():
            k, v = model.anchor(x)
        ek, ev = oracles.anchor_mla_kv(x, weights(model.anchor), n_heads(spec))
        same(k, ek)
        same(v, ev)


def test_full_rank_anchor_equals_the_oracle_repeated_to_the_query_heads(variants):
    for label in ("anchor_kv_gqa", "anchor_kv_full_from_embedding"):
        spec, model = variants[label]
        x = activations(B, T, spec["model"]["d_model"], seed=3)
        with torch.no_grad():
            k, v = model.anchor(x)
        ek, ev = oracles.anchor_kv(x, weights(model.anchor), spec["model"]["head_dim"])
        index = oracles.kv_head_of(n_heads(spec), ek.shape[1])
        assert k.shape[1] == n_heads(spec)  # repeated once, for every loop
        same(k, ek[:, index])
        same(v, ev[:, index])


def _ffn_and_norm(variants, label: str):
    spec, model = variants[label]
    first = model.stack[0] if hasattr(model, "stack") else model.prelude[0]
    return spec, first


def test_swiglu_equals_the_oracle(variants):
    for label in ("dense_mha", "cart", "dense_huginn_layer"):
        spec, layer = _ffn_and_norm(variants, label)
        x = activations(B, T, spec["model"]["d_model"], seed=5)
        with torch.no_grad():
            same(layer.ffn(x), oracles.swiglu(x, weights(layer.ffn)))


def test_gelu_mlp_equals_the_oracle(variants):
    for label in ("dense_gqa_bidirectional_gelu_layernorm_untied", "layernorm_gelu_untied"):
        spec, layer = _ffn_and_norm(variants, label)
        x = activations(B, T, spec["model"]["d_model"], seed=5)
        with torch.no_grad():
            same(layer.ffn(x), oracles.gelu_mlp(x, weights(layer.ffn)))


def test_relu2_mlp_equals_the_oracle(variants):
    for label, scale in (("dense_relu2", 0.5), ("dense_relu2_hidden", 1.0)):
        spec, layer = _ffn_and_norm(variants, label)
        x = activations(B, T, spec["model"]["d_model"], seed=5)
        with torch.no_grad():
            same(layer.ffn(x), oracles.relu2_mlp(x, weights(layer.ffn), scale))


def test_gated_value_embedding_equals_the_oracle(variants):
    """Each listed layer adds its table's rows to V through a per-K/V-head gate on its input's
    first channels; the core's tables are looked up once and read by every loop (whole models
    against the oracle cover the wiring, this the attention with a value given)."""
    for label, block, i in (("dense_values_gqa", "stack", 1), ("self_attn_core_values", "prelude", 0)):
        spec, model = variants[label]
        attn = getattr(model, block)[i].attn
        a = attention_spec(spec, block)
        idx = tokens(B, T, spec["model"]["vocab_size"], seed=3)
        x = activations(B, T, spec["model"]["d_model"], seed=4)
        rows = getattr(model, f"{block}_values")(idx)[i]
        rope = (a["rope_base"], a["rope_style"]) if a["rope"] else None
        with torch.no_grad():
            expected = oracles.mha(x, weights(attn), n_heads(spec), rope, a["causal"], a["qk_norm"], rows)
            same(attn(x, None, 0, rows), expected)
            assert (attn(x) - expected).abs().max() > 1e-2  # the value changes the output
    spec, model = variants["self_attn_core_values"]
    assert [t is None for t in model.core_values(tokens(B, T, 96))] == [True, False]


def test_inject_kinds_equal_the_oracle(variants):
    """diagonal, concat and add_norm: their modules against their definitions (diagonal with
    weights far from its identity-like start); add has no module: the whole models that use each
    kind equal the oracle."""
    spec, model = variants["self_attn_core_values"]
    d = spec["model"]["d_model"]
    h, e = activations(B, T, d, seed=12), activations(B, T, d, seed=13)
    with torch.no_grad():
        same(model.inject(h, e), oracles.diagonal_inject(h, e, weights(model.inject)))
    spec, model = variants["huginn_loop"]
    d = spec["model"]["d_model"]
    h, e = activations(B, T, d, seed=30), activations(B, T, d, seed=31)
    with torch.no_grad():
        same(model.inject(h, e), oracles.concat_inject(h, e, model.inject.adapter.weight))
    spec, model = variants["add_norm_inject"]
    d = spec["model"]["d_model"]
    h, e = activations(B, T, d, seed=32), activations(B, T, d, seed=33)
    with torch.no_grad():
        same(model.inject(h + e), oracles.layernorm(h + e, model.inject.weight, model.inject.bias, 1e-5))
    for label in ("self_attn_core_values", "huginn_loop", "add_inject_zero_start", "add_norm_inject"):
        spec, model = variants[label]
        idx = tokens(B, T, spec["model"]["vocab_size"], seed=14)
        with torch.no_grad():
            same(model(idx)[0], oracles.model_logits(spec, model.state_dict(), idx))


def test_linear_readout_equals_the_oracle_and_runs_once_after_the_loop(variants):
    spec, model = variants["self_attn_core_values"]
    h = activations(B, T, spec["model"]["d_model"], seed=7)
    with torch.no_grad():
        same(model.readout(h), oracles.linear(h, model.readout.weight))
    calls = []
    handle = model.readout.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(tokens(B, T, spec["model"]["vocab_size"], seed=8), loops=4)
    handle.remove()
    assert len(calls) == 1


def _norms(model):
    """Every placement: before each mixer and FFN, after them (sandwich), on a stage's output, after
    the loop, and the final norm."""
    for name, module in model.named_modules():
        if name.endswith("norm") and not list(module.children()):
            yield name, module


def test_rmsnorm_in_every_placement_equals_the_oracle(variants):
    labels = ("dense_mha", "core_two_layers", "dense_huginn_layer", "sandwich_core_out_norm_shared")
    for label in (*labels, "self_attn_core_values"):
        spec, model = variants[label]
        x = 3 * activations(B, T, spec["model"]["d_model"], seed=6) + 1
        eps = spec["model"]["norm"]["eps"]
        placements = list(_norms(model))
        assert len(placements) >= 5
        for _, norm in placements:
            with torch.no_grad():
                same(norm(x), oracles.rmsnorm(x, norm.weight, eps))


def test_layernorm_in_every_placement_equals_the_oracle(variants):
    for label in ("dense_gqa_bidirectional_gelu_layernorm_untied", "layernorm_gelu_untied"):
        spec, model = variants[label]
        x = 3 * activations(B, T, spec["model"]["d_model"], seed=6) + 1
        eps = spec["model"]["norm"].get("eps", 1e-6)
        for _, norm in _norms(model):
            with torch.no_grad():
                same(norm(x), oracles.layernorm(x, norm.weight, norm.bias, eps))


# ----------------------------------------------------------------------------- the loop's parts


def _loop_step_vs_oracle(variants, label: str) -> None:
    spec, model = variants[label]
    d = spec["model"]["d_model"]
    h_in, e = activations(B, T, d, seed=10), activations(B, T, d, seed=11)
    ref = oracles.Reference(spec, model.state_dict())
    with torch.no_grad():
        kv = model.anchor(e) if hasattr(model, "anchor") else ()
        step = (
            model.loop_step(model.core[0], h_in, *kv) if isinstance(model.core, torch.nn.ModuleList) else None
        )
        if step is None:
            step = model.loop_step(h_in, *kv)
        same(step, ref.loop_step(h_in, 0, kv or None))


def test_lti_gate_in_both_forms_and_multi_layer_cores_equals_the_oracle(variants):
    for label in (
        "cart",
        "cart_contractive",
        "core_two_layers",
        "core_two_layers_contractive",
        "self_attn_core_gqa_two_layers",
        "unshared_core",
    ):
        _loop_step_vs_oracle(variants, label)


def test_residual_gate_and_no_gate_equal_the_oracle(variants):
    for label in ("residual_gate", "no_gate_two_taps"):
        _loop_step_vs_oracle(variants, label)


def test_decay_gate_equals_the_oracle(variants):
    spec, model = variants["decay_gate_channel_signal"]
    d = spec["model"]["d_model"]
    h_prev, e, out = (activations(B, T, d, seed=30 + i) for i in range(3))
    with torch.no_grad():
        same(model.gate(h_prev, e, out), oracles.decay_gate(h_prev, e, out, weights(model.gate)))


def test_channel_loop_signal_equals_the_oracle_at_any_loop(variants):
    spec, model = variants["decay_gate_channel_signal"]
    d, fraction = spec["model"]["d_model"], spec["blocks"]["core"]["loop_embedding"]["fraction"]
    for r in (1, 2, 7, 40):  # no table: any loop index
        same(model.loop_embedding(r), oracles.channel_signal(r, d, fraction, 10000.0))


def test_mixture_of_experts_equals_the_oracle(variants):
    """Routing on logits + router_bias (drawn so it moves the choice), renormalised top-k, shared experts."""
    spec, model = variants["mythos_loop"]
    ffn = model.core.ffn
    x = activations(B, T, spec["model"]["d_model"], seed=40)
    bias = ffn.router_bias.clone()
    try:
        with torch.no_grad():
            ffn.router_bias.copy_(activations(bias.numel(), seed=41))
            same(ffn(x), oracles.moe(x, weights(ffn), spec["blocks"]["core"]["ffn"]["top_k"]))
    finally:
        ffn.router_bias.copy_(bias)


def test_loop_lora_and_act_halting_equal_the_oracle(variants):
    """The LoRA at every loop (past its two-row table too), one ACT step from a half-spent mass, and the
    whole model past the table."""
    spec, model = variants["mythos_loop"]
    d = spec["model"]["d_model"]
    h, y = activations(B, T, d, seed=50), activations(B, T, d, seed=51)
    with torch.no_grad():
        for r in range(4):
            same(model.lora(y, r), oracles.loop_lora(y, r, weights(model.lora)))
        spent, halted = torch.full((B, T), 0.5), torch.zeros(B, T, dtype=torch.bool)
        got = model.halt(h, spent, halted)
        expected = oracles.act_step(h, spent, halted, weights(model.halt), 0.9)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, **TOL)
        idx = tokens(B, T, spec["model"]["vocab_size"], seed=15)
        same(model(idx, loops=5)[0], oracles.model_logits(spec, model.state_dict(), idx, 5))


def test_hyper_state_mix_equals_the_oracle(variants):
    for label in ("cart", "no_gate_two_taps"):
        spec, model = variants[label]
        taps = spec["blocks"]["core"]["state_mix"]["taps"]
        states = [activations(B, T, spec["model"]["d_model"], seed=20 + i) for i in range(taps)]
        with torch.no_grad():
            same(model.state_mix(states), oracles.hyper_mix(states, model.state_mix.weights))


def test_loop_embedding_equals_the_oracle_at_every_row(variants):
    for label in ("cart", "mha_prelude_bidirectional_coda"):
        spec, model = variants[label]
        table = spec["blocks"]["core"]["loop_embedding"]
        proj = model.loop_embedding.proj.weight
        for r in range(table["max_loops"]):
            with torch.no_grad():
                same(model.loop_embedding(r), oracles.loop_embedding(r, table["dim"], proj))


# ----------------------------------------------------------------------------- every kind has one

# (family, kind) -> its oracle test; families as in cartspec.components.kinds, plus the FFN, norm
# and anchor kinds by their `kind` values
ORACLES = {
    ("attention", "mha"): test_mha_gqa_mqa_self_attention_equals_the_oracle,
    ("attention", "mla"): test_latent_kv_self_attention_equals_the_oracle,
    ("attention", "cross"): test_cross_attention_to_the_anchor_equals_the_oracle,
    ("gate", "lti"): test_lti_gate_in_both_forms_and_multi_layer_cores_equals_the_oracle,
    ("gate", "residual"): test_residual_gate_and_no_gate_equal_the_oracle,
    ("gate", "decay"): test_decay_gate_equals_the_oracle,
    ("attention", "deepseek_mla"): test_deepseek_latent_attention_equals_the_oracle,
    ("loop_embedding", "channels"): test_channel_loop_signal_equals_the_oracle_at_any_loop,
    ("state_mix", "hyper"): test_hyper_state_mix_equals_the_oracle,
    ("loop_embedding", "sinusoidal"): test_loop_embedding_equals_the_oracle_at_every_row,
    ("ffn", "swiglu"): test_swiglu_equals_the_oracle,
    ("ffn", "gelu"): test_gelu_mlp_equals_the_oracle,
    ("ffn", "relu2"): test_relu2_mlp_equals_the_oracle,
    ("value_embedding", "gated"): test_gated_value_embedding_equals_the_oracle,
    ("readout", "linear"): test_linear_readout_equals_the_oracle_and_runs_once_after_the_loop,
    ("inject", "add"): test_inject_kinds_equal_the_oracle,
    ("inject", "add_norm"): test_inject_kinds_equal_the_oracle,
    ("lora", "per_loop"): test_loop_lora_and_act_halting_equal_the_oracle,
    ("halt", "act"): test_loop_lora_and_act_halting_equal_the_oracle,
    ("core_ffn", "moe"): test_mixture_of_experts_equals_the_oracle,
    ("inject", "concat"): test_inject_kinds_equal_the_oracle,
    ("inject", "diagonal"): test_inject_kinds_equal_the_oracle,
    ("norm", "rmsnorm"): test_rmsnorm_in_every_placement_equals_the_oracle,
    ("norm", "layernorm"): test_layernorm_in_every_placement_equals_the_oracle,
    ("anchor", "mla_kv"): test_latent_anchor_equals_the_oracle,
    ("anchor", "kv"): test_full_rank_anchor_equals_the_oracle_repeated_to_the_query_heads,
}
REGISTRY_FAMILIES = (
    "attention",
    "gate",
    "state_mix",
    "loop_embedding",
    "value_embedding",
    "readout",
    "inject",
    "lora",
    "halt",
)


def registered_kinds() -> set[tuple[str, str]]:
    """Every kind the compiler knows: the registry's families, and the kind literals of the
    model-wide FFN and norm, of the core's FFN and of the anchor."""
    found = set()
    for family in REGISTRY_FAMILIES:
        for cls in kinds(family):
            for kind in typing.get_args(cls.model_fields["kind"].annotation):
                found.add((family, kind))
    for family, cls in (("ffn", FFN), ("norm", Norm), ("anchor", Anchor), ("core_ffn", MoE)):
        found |= {(family, kind) for kind in typing.get_args(cls.model_fields["kind"].annotation)}
    return found


def test_every_registered_kind_names_its_oracle_test():
    missing = sorted(registered_kinds() - ORACLES.keys())
    assert not missing, f"kinds without an oracle test in tests/test_oracles.py: {missing}"
    stale = sorted(ORACLES.keys() - registered_kinds())
    assert not stale, f"oracle entries for kinds no longer registered: {stale}"
    for test in ORACLES.values():
        assert test.__name__.startswith("test_") and globals()[test.__name__] is test


@pytest.mark.parametrize("taps", [1, 2, 4])
def test_loop_parts_start_where_the_docs_say_when_the_spec_leaves_them_to_defaults(tmp_path, taps):
    """The blend's raw weights default to [1, 0, ...] (all on the newest state), the gate's
    sigmoid(a) to 0.9 in every channel; the loop table is sin/cos of the loop number."""
    sets = (
        f"blocks.core.state_mix={{kind: hyper, taps: {taps}}}",
        "blocks.core.gate={kind: lti}",
        "blocks.core.loop_embedding={kind: sinusoidal, dim: 8, max_loops: 5}",
    )
    _, module = compile_variant(tmp_path, f"defaults_{taps}", sets)
    model = build(module)
    expected = torch.tensor([1.0] + [0.0] * (taps - 1))
    torch.testing.assert_close(model.state_mix.weights.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.sigmoid(model.gate.a.detach()), torch.full((64,), 0.9))
    proj = model.loop_embedding.proj.weight.detach()
    for r in range(5):
        torch.testing.assert_close(model.loop_embedding(r).detach(), oracles.loop_embedding(r, 8, proj))
