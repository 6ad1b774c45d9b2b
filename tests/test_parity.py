"""`cartspec parity`: the dense baseline of a looped spec at stored, effective or FLOP parity.

The paper's pairing at d=1024 (docs/cart.md, dense baselines) is the specification: Dense 7L at stored parity
(122.7M <= CART's 125.1M) and Dense 12L at effective parity (186.9M >= 179.0M), although 11L
(174.1M) is nearer; 12L is also the FLOP match (367.3 vs 355.0 GFLOPs).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from cartspec.accounting import account
from cartspec.resolve import resolve

CART = "specs/cart_d1024.yaml"


def layers_of(path) -> int:
    return yaml.safe_load(path.read_text())["blocks"]["stack"]["layers"]


@pytest.mark.parametrize(
    ("match", "layers", "count"),
    [("stored", 7, "122,698,752"), ("effective", 12, "186,934,272")],
)
def test_paper_pairing_at_d1024_through_the_real_cli(run_cli, tmp_path, match, layers, count):
    out = tmp_path / f"dense_{match}.yaml"
    rc, stdout, stderr = run_cli("parity", CART, "--match", match, "-o", str(out))
    assert (rc, stderr) == (0, "")
    assert re.search(rf"^dense\s+{layers} layers, d_model 1024\s+{count}", stdout, re.M), stdout
    assert f"wrote    {out}  (cart_d1024_dense_{match})" in stdout
    assert layers_of(out) == layers

    # the written spec is a valid standalone spec with the counts the header claims
    rc, stdout, stderr = run_cli("params", "--json", str(out))
    assert (rc, stderr) == (0, "")
    report = json.loads(stdout)
    assert report["name"] == f"cart_d1024_dense_{match}"
    assert f"{report['stored']:,}" == count
    assert f"dense {count} vs cart_d1024" in out.read_text()


def test_written_spec_keeps_the_looped_models_recipe_and_sizes(cli, tmp_path):
    out = tmp_path / "dense.yaml"
    rc, _, _ = cli("parity", CART, "--match", "stored", "-o", str(out))
    assert rc == 0
    dense, cart = resolve(out).spec, resolve(CART).spec
    assert dense.train == cart.train
    assert dense.model == cart.model
    assert dense.blocks.stack.attention.kind == "mha"
    assert dense.blocks.stack.attention.rope and dense.blocks.stack.attention.causal
    assert [dense.blocks.prelude, dense.blocks.anchor, dense.blocks.core, dense.blocks.coda] == [None] * 4


def test_flops_match_picks_12_layers_with_the_next_smaller_on_the_other_side(cli):
    rc, stdout, stderr = cli("parity", CART, "--match", "flops")
    assert rc == 0
    assert yaml.safe_load(stdout)["blocks"]["stack"]["layers"] == 12
    assert re.search(r"^looped\s+cart_d1024\s+355\.0 GFLOPs/seq", stderr, re.M)
    assert re.search(r"^dense\s+12 layers, d_model 1024\s+367\.3 GFLOPs/seq\s+\+3\.46%", stderr, re.M)
    assert re.search(r"^other\s+11 layers, d_model 1024\s+336\.7 GFLOPs/seq\s+-5\.16%", stderr, re.M)


def test_nearest_rule_picks_11_layers_at_effective_parity_unlike_the_paper(cli):
    rc, stdout, stderr = cli("parity", CART, "--match", "effective", "--rule", "nearest")
    assert rc == 0
    assert yaml.safe_load(stdout)["blocks"]["stack"]["layers"] == 11
    assert re.search(r"^other\s+12 layers, d_model 1024\s+186,934,272", stderr, re.M)


def test_vary_width_keeps_the_unique_layer_count_and_is_the_widest_within_the_stored_count(cli, tmp_path):
    out = tmp_path / "dense.yaml"
    rc, _, _ = cli("parity", CART, "--match", "stored", "--vary", "width", "-o", str(out))
    assert rc == 0
    dense = resolve(out).spec
    assert dense.blocks.stack.layers == 6 + 1 + 1  # prelude + core + coda
    d = dense.model.d_model
    assert d % 64 == 0 and d < 1024
    looped = account(resolve(CART).graph).stored
    assert account(resolve(out).graph).stored <= looped
    assert account(resolve(out, [f"model.d_model={d + 64}"]).graph).stored > looped


def test_vary_width_with_an_explicit_depth(cli):
    rc, stdout, _ = cli("parity", CART, "--match", "effective", "--vary", "width", "--layers", "4")
    assert rc == 0
    data = yaml.safe_load(stdout)
    assert data["blocks"]["stack"]["layers"] == 4
    assert data["model"]["d_model"] > 1024


def test_set_overrides_apply_to_the_looped_spec_first(cli):
    rc, stdout, stderr = cli("parity", CART, "--match", "effective", "--set", "blocks.core.loops=10")
    assert rc == 0
    assert re.search(r"^looped\s+cart_d1024\s+222,147,614", stderr, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["specs/dense_d1024.yaml", "--match", "stored"], "dense_d1024 has no core"),
        ([CART, "--match", "params"], "--match: expected one of stored, effective, flops"),
        ([CART, "--match", "stored", "--rule", "closest"], "--rule: expected one of"),
        ([CART, "--match", "stored", "--layers", "4"], "--layers fixes the depth of a --vary width"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(cli, args, message):
    rc, stdout, stderr = cli("parity", *args)
    assert rc == 2
    assert stderr.count("\n") == 1 and message in stderr


def test_huginns_dense_baseline_keeps_its_model_and_drops_the_loops_depth_schedule(cli, tmp_path):
    """A sampled depth belongs to the loop: the dense baseline trains at its fixed depth, with the
    looped model's model-wide choices (sandwich norms, fused swiglu, sqrt(d) embedding scale)."""
    out = tmp_path / "dense.yaml"
    rc, _, err = cli("parity", "specs/peers/huginn_0125.yaml", "--match", "stored", "-o", str(out))
    assert (rc, err) == (0, "")
    dense, huginn = resolve(out).spec, resolve("specs/peers/huginn_0125.yaml").spec
    assert dense.model == huginn.model
    assert dense.train.depth.kind == "fixed" and huginn.train.depth.kind == "poisson_lognormal"
    assert dense.train.model_copy(update={"depth": huginn.train.depth}) == huginn.train
    assert account(resolve(out).graph).stored <= account(resolve("specs/peers/huginn_0125.yaml").graph).stored
