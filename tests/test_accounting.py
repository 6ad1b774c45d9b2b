"""Parameter and FLOP accounting: docs/accounting.md's definitions, the CART paper's formulas and tables, invariants.

Counts come from the formulas, not a lookup table: every figure here is reached through the real
``cartspec params --json`` on a shipped spec, often changed with ``--set`` (prelude depth, loops,
width), and compared with a closed form written from the paper (docs/cart.md, parameter counts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartspec.resolve import resolve_data

SPECS = Path(__file__).resolve().parents[1] / "specs"
V, T = 32_000, 1024  # the shipped specs' vocabulary and sequence length


def params(cli, spec: str | Path, *sets: str) -> dict:
    """``cartspec params --json SPEC --set ...`` (in-process), as a dict; a str names a shipped spec."""
    args = ["params", "--json", str(spec if isinstance(spec, Path) else SPECS / spec)]
    for s in sets:
        args += ["--set", s]
    rc, out, err = cli(*args)
    assert rc == 0, err
    return json.loads(out)


def gflops(report: dict) -> str:
    return f"{report['flops']['forward_per_sequence'] / 1e9:.1f}"


def millions(n: int) -> float:
    return round(n / 1e6, 2)


# ----------------------------------------------------------------------------- the exact counts (docs/accounting.md)


TRUTH_TABLE = [
    # spec, --set overrides, stored, effective (per use), effective (paper), fwd GFLOPs/seq at T=1024
    ("cart_d1024.yaml", (), 125_093_891, 179_012_626, 178_843_651, "355.0"),
    ("cart_d1024.yaml", ("blocks.core.loops=8",), 125_093_891, 200_580_120, 200_343_555, "407.6"),
    ("cart_d1024.yaml", ("blocks.core.loops=10",), 125_093_891, 222_147_614, 221_843_459, "460.2"),
    ("cart_d256.yaml", (), 14_365_187, 18_014_482, 17_972_227, None),
    ("dense_d1024.yaml", (), 122_698_752, 122_698_752, 122_698_752, "214.2"),
    ("dense_d1024_12l.yaml", (), 186_934_272, 186_934_272, 186_934_272, None),
    ("dense_d1024.yaml", ("blocks.stack.layers=17",), 251_169_792, 251_169_792, 251_169_792, "520.3"),
]


@pytest.mark.parametrize(
    ("spec", "sets", "stored", "effective", "paper", "fwd_gflops"),
    TRUTH_TABLE,
    ids=[f"{row[0].removesuffix('.yaml')}{''.join('-' + s for s in row[1])}" for row in TRUTH_TABLE],
)
def test_params_reproduces_every_row_of_the_exact_count_table(
    cli, spec, sets, stored, effective, paper, fwd_gflops
):
    report = params(cli, spec, *sets)
    assert (report["stored"], report["effective"], report["effective_paper"]) == (stored, effective, paper)
    if fwd_gflops is not None:
        assert gflops(report) == fwd_gflops


# ----------------------------------------------------------------------------- the paper's closed form


def swiglu_hidden(d: int) -> int:
    """The author's FFN width: ceil(int(8d/3) / 256) * 256."""
    return math.ceil(int(8 * d / 3) / 256) * 256


def cart_closed_form(d: int, P: int, R: int) -> dict[str, int]:
    """CART (docs/cart.md, parameter counts), coda of 1 layer, vocabulary 32,000, tied head.

    prelude/coda layer = 2.75d² (MLA: q, o = 2d²; kv_down, k_up, v_up = 3·d·d/4) + 3·d·ffn + 2d (norms)
    core block         = 2d² (cross-attention: q, o only) + 3·d·ffn + 2d
    anchor             = 0.75d² (its own kv_down, k_up, v_up)
    loop control       = d (gate a) + 3 (hyper-connection weights) + 32·d (loop-embedding projection)
    """
    ffn = swiglu_hidden(d)
    layer = 11 * d * d // 4 + 3 * d * ffn + 2 * d
    core = 2 * d * d + 3 * d * ffn + 2 * d
    anchor = 3 * d * d // 4
    loop_control = d + 3 + 32 * d
    embedding, final_norm = V * d, d
    stored = embedding + P * layer + anchor + core + layer + final_norm + loop_control
    paper = stored + (R - 1) * core  # N_eff = N_stored + (R-1)·N_core; loop control counted once
    return {
        "stored": stored,
        "effective": stored + (R - 1) * (core + loop_control),  # the unrolled network: all R uses
        "effective_paper": paper,
        "forward": 2 * (paper - embedding) * T + 4 * (P + R + 1) * T * T * d,  # P + R + coda attentions
    }


@pytest.mark.parametrize("R", [1, 2, 4, 6, 8, 10])
@pytest.mark.parametrize("P", [2, 3, 4, 6])
@pytest.mark.parametrize("d", [256, 512, 768, 1024])
def test_cart_counts_follow_the_papers_closed_form_at_every_width_depth_and_loop_count(cli, d, P, R):
    report = params(cli, f"cart_d{d}.yaml", f"blocks.prelude.layers={P}", f"blocks.core.loops={R}")
    expected = cart_closed_form(d, P, R)
    got = {k: report[k] for k in ("stored", "effective", "effective_paper")}
    got["forward"] = report["flops"]["forward_per_sequence"]
    assert got == expected


@pytest.mark.parametrize("d", [256, 512, 768])
def test_width_set_on_the_command_line_gives_the_shipped_spec_of_that_width(cli, d):
    via_set = params(cli, "cart_d1024.yaml", f"model.d_model={d}")
    shipped = params(cli, f"cart_d{d}.yaml")
    for key in ("stored", "effective", "effective_paper", "embedding", "flops"):
        assert via_set[key] == shipped[key], key


# ----------------------------------------------------------------------------- the paper's printed tables


# docs/cart.md (parameter counts): layer and core sizes, stored at P=6, effective (paper) at R=6/8/10, in M.
PAPER_P6 = {
    256: (0.77, 0.72, 14.37, 17.97, 19.42, 20.86),
    512: (3.08, 2.88, 41.05, 55.47, 61.24, 67.01),
    768: (6.34, 5.90, 75.34, 104.84, 116.64, 128.44),
    1024: (11.54, 10.75, 125.09, 178.84, 200.34, 221.84),
}
# docs/cart.md: stored (M) for the other prelude depths, at any R.
PAPER_STORED_BY_P = {
    256: {2: 11.28, 3: 12.05, 4: 12.82},
    512: {2: 28.73, 3: 31.81, 4: 34.89},
    768: {2: 49.97, 3: 56.31, 4: 62.65},
    1024: {2: 78.95, 3: 90.48, 4: 102.02},
}
# The author's dense-baseline formula (M) by width and depth.
PAPER_DENSE = {
    256: {7: 14.16, 12: 18.42},
    512: {7: 40.25, 12: 57.29},
    768: {7: 74.13, 12: 109.53},
    1024: {7: 122.70, 12: 186.93, 17: 251.17},
}


@pytest.mark.parametrize("d", sorted(PAPER_P6))
def test_cart_p6_matches_the_papers_table_to_its_printed_rounding(cli, d):
    layer, core, stored, eff6, eff8, eff10 = PAPER_P6[d]
    r6 = params(cli, f"cart_d{d}.yaml")
    blocks = {b["name"]: b for b in r6["blocks"]}
    assert millions(blocks["prelude"]["stored"] // 6) == layer
    assert millions(blocks["core"]["stored"]) == core
    assert millions(r6["stored"]) == stored
    effective = [r6] + [params(cli, f"cart_d{d}.yaml", f"blocks.core.loops={R}") for R in (8, 10)]
    assert [millions(r["effective_paper"]) for r in effective] == [eff6, eff8, eff10]


@pytest.mark.parametrize("d", sorted(PAPER_STORED_BY_P))
@pytest.mark.parametrize("P", [2, 3, 4])
def test_cart_stored_at_other_prelude_depths_matches_the_papers_table(cli, d, P):
    for R in (2, 6):  # "at any R"
        report = params(cli, f"cart_d{d}.yaml", f"blocks.prelude.layers={P}", f"blocks.core.loops={R}")
        assert millions(report["stored"]) == PAPER_STORED_BY_P[d][P]


@pytest.mark.parametrize(("d", "layers"), [(d, n) for d, row in PAPER_DENSE.items() for n in row])
def test_dense_baselines_match_the_papers_table(cli, d, layers):
    report = params(cli, "dense_d1024.yaml", f"model.d_model={d}", f"blocks.stack.layers={layers}")
    ffn = swiglu_hidden(d)
    exact = V * d + layers * (4 * d * d + 3 * d * ffn + 2 * d) + d  # full-rank MHA = 4d²
    assert report["stored"] == report["effective"] == report["effective_paper"] == exact
    assert millions(report["stored"]) == PAPER_DENSE[d][layers]


# ----------------------------------------------------------------------------- ablations and options


def test_unshared_core_stores_r_copies_so_stored_equals_the_shared_models_paper_effective(cli):
    shared = params(cli, "cart_d1024.yaml")
    unshared = params(cli, "ablation_unshared_core.yaml")
    assert unshared["stored"] == shared["effective_paper"] == 178_843_651  # the paper: "≈178.8M by formula"
    assert unshared["effective_paper"] == unshared["stored"]  # the author's count: simply stored
    assert unshared["effective"] == shared["effective"]  # the unrolled network is the same size
    core = next(b for b in unshared["blocks"] if b["name"] == "core")
    assert (core["uses"], core["stored"], core["effective"]) == (6, 6 * 10_749_952, 6 * 10_749_952)


def test_self_attention_core_without_anchor_stores_r_mla_layers(cli):
    report = params(cli, "ablation_self_attn_core.yaml")
    assert report["stored"] == 182_775_811  # the paper: "≈182.8M by formula"
    assert "anchor" not in {b["name"] for b in report["blocks"]}


def test_unfrozen_kv_counts_the_anchor_once_per_loop(cli):
    frozen = params(cli, "cart_d1024.yaml")
    unfrozen = params(cli, "ablation_unfrozen_kv.yaml")
    anchor = 3 * 1024 * 1024 // 4
    assert unfrozen["stored"] == frozen["stored"]
    assert unfrozen["effective_paper"] == frozen["effective_paper"] + 5 * anchor
    assert unfrozen["effective"] == frozen["effective"] + 5 * anchor


@pytest.mark.parametrize(
    ("ablation", "removed", "name"),
    [
        ("ablation_no_hc.yaml", 3, "state_mix"),
        ("ablation_no_lie.yaml", 32 * 1024, "loop_embedding"),
        ("ablation_no_lti.yaml", 1024, "gate"),
    ],
)
def test_removing_loop_control_drops_it_once_from_stored_and_paper_and_r_times_from_effective(
    cli, ablation, removed, name
):
    base, report = params(cli, "cart_d1024.yaml"), params(cli, ablation)
    assert base["stored"] - report["stored"] == removed
    assert base["effective_paper"] - report["effective_paper"] == removed
    assert base["effective"] - report["effective"] == 6 * removed
    assert name not in {b["name"] for b in report["blocks"]}


def test_one_loop_makes_every_count_equal_stored(cli):
    report = params(cli, "ablation_r1.yaml")
    assert report["stored"] == report["effective"] == report["effective_paper"] == 125_093_891


def test_untied_head_stores_a_second_vocab_by_d_matrix_counted_as_embedding(cli):
    tied = params(cli, "dense_d1024.yaml")
    untied = params(cli, "dense_d1024.yaml", "model.tie_embeddings=false")
    assert untied["stored"] - tied["stored"] == V * 1024
    assert (tied["embedding"], untied["embedding"]) == (V * 1024, 2 * V * 1024)
    assert untied["non_embedding"] == tied["non_embedding"]
    assert untied["flops"]["forward_per_sequence"] == tied["flops"]["forward_per_sequence"]


def test_gqa_kv_heads_shrink_k_and_v_projections(cli):
    mha = params(cli, "dense_d1024.yaml", "blocks.stack.layers=1")
    gqa = params(cli, "dense_d1024.yaml", "blocks.stack.layers=1", "blocks.stack.attention.kv_heads=4")
    # K and V go from d x d each to d x (4 heads x 64)
    assert mha["stored"] - gqa["stored"] == 2 * 1024 * (1024 - 4 * 64)


def test_layernorm_adds_a_bias_to_every_norm(cli):
    rms = params(cli, "dense_d1024.yaml")
    ln = params(cli, "dense_d1024.yaml", "model.norm.kind=layernorm")
    norms = 7 * 2 + 1  # two per layer and the final one
    assert ln["stored"] - rms["stored"] == norms * 1024


def test_gelu_ffn_defaults_to_two_d_by_4d_matrices(cli):
    report = params(cli, "dense_d1024.yaml", "blocks.stack.layers=1", "model.ffn.kind=gelu")
    d = 1024
    assert report["stored"] == V * d + (4 * d * d + 2 * d * 4 * d + 2 * d) + d


def test_relu2_ffn_defaults_to_two_d_by_4d_matrices_and_refuses_a_scale_elsewhere(cli):
    report = params(cli, "dense_d1024.yaml", "blocks.stack.layers=1", "model.ffn={kind: relu2, scale: 0.5}")
    d = 1024
    assert report["stored"] == V * d + (4 * d * d + 2 * d * 4 * d + 2 * d) + d
    rc, _, err = cli("params", str(SPECS / "dense_d1024.yaml"), "--set", "model.ffn.scale=0.5")
    assert rc == 2
    assert "model.ffn.scale: only relu2 takes a scale" in err


def test_explicit_ffn_hidden_overrides_the_rounded_default(cli):
    report = params(cli, "dense_d1024.yaml", "blocks.stack.layers=1", "model.ffn.hidden=1000")
    d = 1024
    assert report["stored"] == V * d + (4 * d * d + 3 * d * 1000 + 2 * d) + d


def test_training_flops_are_three_forwards_and_the_head_is_reported_apart(cli):
    report = params(cli, "cart_d1024.yaml")
    f = report["flops"]
    assert f["seq_len"] == T
    assert f["attention_uses"] == 6 + 6 + 1  # prelude layers, loops, coda layer
    assert f["train_per_token"] == 3 * f["forward_per_sequence"] / T
    assert f["head_per_sequence"] == 2 * V * 1024 * T


# ----------------------------------------------------------------------------- sharing groups


def test_albert_style_shared_prelude_stores_one_layer_and_uses_it_p_times(cli, write_spec):
    write_spec((SPECS / "cart_d1024.yaml").read_text(), "base.yaml")
    path = write_spec(
        """
        name: albert
        extends: base.yaml
        share:
          - {name: prelude_shared, members: [prelude.*]}
        """
    )
    base, albert = params(cli, "cart_d1024.yaml"), params(cli, path)
    layer = 11_536_384
    assert base["stored"] - albert["stored"] == 5 * layer
    assert albert["effective"] == base["effective"]
    group = next(g for g in albert["groups"] if g["name"] == "prelude_shared")
    assert (group["members"], group["uses"]) == ([f"prelude.{i}" for i in range(6)], 6)


def test_prelude_and_coda_layers_can_share_one_set_of_weights(cli, write_spec):
    write_spec((SPECS / "cart_d1024.yaml").read_text(), "base.yaml")
    path = write_spec(
        """
        name: tied_ends
        extends: base.yaml
        share:
          - {name: ends, members: [prelude.0, coda.0]}
        """
    )
    base, tied = params(cli, "cart_d1024.yaml"), params(cli, path)
    assert base["stored"] - tied["stored"] == 11_536_384
    assert tied["effective"] == base["effective"]
    blocks = {b["name"]: b for b in tied["blocks"]}
    assert (
        blocks["coda"]["stored"] == 0 and blocks["coda"]["effective"] == 11_536_384
    )  # counted under prelude


# ----------------------------------------------------------------------------- invariants


@st.composite
def looped_specs(draw) -> dict:
    """A random but valid looped (or dense) spec as plain data."""
    head_dim = draw(st.sampled_from([16, 32, 64]))
    d = head_dim * draw(st.integers(1, 8))
    dense = draw(st.booleans())
    model = {
        "vocab_size": draw(st.integers(2, 5000)),
        "d_model": d,
        "max_seq_len": draw(st.integers(1, 4096)),
        "head_dim": head_dim,
        "tie_embeddings": draw(st.booleans()),
        "ffn": {"kind": draw(st.sampled_from(["swiglu", "gelu", "relu2"]))},
        "norm": {"kind": draw(st.sampled_from(["rmsnorm", "layernorm"]))},
    }
    self_attention = st.sampled_from([{"kind": "mla"}, {"kind": "mha"}])
    spec = {"name": "prop", "model": model, "train": {"seq_len": 1}}
    if dense:
        spec["blocks"] = {"stack": {"layers": draw(st.integers(1, 12)), "attention": draw(self_attention)}}
        return spec
    loops = draw(st.integers(1, 12))
    blocks: dict = {}
    prelude = draw(st.integers(0, 4))
    if prelude:
        blocks["prelude"] = {"layers": prelude, "attention": draw(self_attention)}
    if draw(st.booleans()):
        blocks["anchor"] = {
            "from": "prelude" if prelude else "embedding",
            "recompute": draw(st.sampled_from(["never", "every_loop"])),
        }
        attention = {"kind": "cross"}
    else:
        attention = draw(self_attention)
    core = {
        "loops": loops,
        "shared": draw(st.booleans()),
        "layers": draw(st.integers(1, 3)),
        "attention": attention,
    }
    core["gate"] = draw(st.sampled_from([None, {"kind": "lti"}, {"kind": "residual"}]))
    core["state_mix"] = draw(st.sampled_from([None, {"kind": "hyper", "taps": 3}]))
    core["loop_embedding"] = draw(st.sampled_from([None, {"kind": "sinusoidal", "max_loops": 16}]))
    blocks["core"] = core
    coda = draw(st.integers(0, 2))
    if coda:
        blocks["coda"] = {"layers": coda, "attention": draw(self_attention)}
    spec["blocks"] = blocks
    return spec


def report_of(data: dict):
    return resolve_data(data, "x.yaml").params


@settings(max_examples=150, deadline=None, derandomize=True)  # the same examples on every run
@given(looped_specs())
def test_invariants_hold_for_any_spec(data):
    r = report_of(data)
    assert r.stored <= r.effective_paper <= r.effective, "effective >= paper effective >= stored"
    assert r.stored == sum(g.stored for g in r.groups), "stored == sum of sharing groups"
    assert r.effective == sum(g.effective for g in r.groups), "effective == sum of groups x uses"
    assert r.stored == sum(b.stored for b in r.blocks), "stored == sum of block rows"
    assert r.effective == sum(b.effective for b in r.blocks), "effective == sum of block rows"
    assert r.stored == r.embedding + r.non_embedding
    m = data["model"]
    assert r.embedding == m["vocab_size"] * m["d_model"] * (1 if m["tie_embeddings"] else 2)
    assert r.flops.train_per_token == 3 * r.flops.forward_per_sequence / m["max_seq_len"]
    core = data["blocks"].get("core")
    if core is None or core["loops"] == 1:
        assert r.effective == r.stored, "a network run once is its own unrolling"
    elif not core["shared"]:
        assert r.effective_paper == r.stored + sum(
            g.stored * (g.uses - 1) for g in r.groups if g.name == "anchor"
        ), "the author's count of an unshared core is stored (plus a recomputed anchor)"
