"""``extends:`` chains and ``--set`` overrides: precedence, merging, and the errors of each.

Precedence, lowest first: the base named by ``extends:``, the file that extends it, then each
``--set`` in command-line order. Mappings merge key by key, lists and scalars replace, and
``null`` removes a key so the schema's default applies again.
"""

from __future__ import annotations

import json

import pytest

from cartspec.loader import load

BASE = """
    name: base
    model: {vocab_size: 300, d_model: 32, max_seq_len: 16, head_dim: 8}
    blocks:
      prelude: {layers: 2, attention: {kind: mla}}
      anchor: {from: prelude}
      core:
        loops: 2
        attention: {kind: cross}
        gate: {kind: lti, init: 0.9}
        state_mix: {kind: hyper, taps: 3, init: [1.0, 0.0, 0.0]}
      coda: {layers: 1, attention: {kind: mla}}
    train: {steps: 100}
"""


@pytest.fixture
def base(write_spec):
    return write_spec(BASE, "base.yaml")


def core_of(path, *sets: str) -> dict:
    return load(path, sets).data["blocks"]["core"]


# ----------------------------------------------------------------------------- precedence


def test_extending_file_overrides_its_base_and_set_overrides_both(write_spec, base):
    child = write_spec("""
        name: child
        extends: base.yaml
        blocks: {core: {loops: 3}}
        """)
    assert core_of(base)["loops"] == 2
    assert core_of(child)["loops"] == 3
    assert core_of(child, "blocks.core.loops=4")["loops"] == 4


def test_set_overrides_apply_in_command_line_order(base):
    assert core_of(base, "blocks.core.loops=4", "blocks.core.loops=5")["loops"] == 5


def test_precedence_reaches_the_reported_counts(cli, write_spec, base):
    write_spec("""
        name: child
        extends: base.yaml
        blocks: {core: {loops: 3}}
        """)

    def loops_used(*args: str) -> int:
        rc, out, err = cli("params", "--json", *args)
        assert rc == 0, err
        return next(b["uses"] for b in json.loads(out)["blocks"] if b["name"] == "core")

    assert loops_used("base.yaml") == 2
    assert loops_used("spec.yaml") == 3
    assert loops_used("spec.yaml", "--set", "blocks.core.loops=4") == 4


def test_mappings_merge_key_by_key(write_spec, base):
    child = write_spec("""
        name: child
        extends: base.yaml
        blocks:
          core:
            gate: {init: 0.5}
        """)
    core = core_of(child)
    assert core["gate"] == {"kind": "lti", "init": 0.5}  # kind kept from the base
    assert core["loops"] == 2 and core["attention"] == {"kind": "cross"}


def test_lists_replace_rather_than_merge(write_spec, base):
    child = write_spec("""
        name: child
        extends: base.yaml
        blocks:
          core:
            state_mix: {taps: 2, init: [0.5, 0.5]}
        """)
    assert core_of(child)["state_mix"] == {"kind": "hyper", "taps": 2, "init": [0.5, 0.5]}


def test_null_in_an_extending_file_removes_the_key(write_spec, base):
    child = write_spec("""
        name: child
        extends: base.yaml
        blocks:
          core: {gate: null}
        """)
    assert "gate" not in core_of(child)


@pytest.mark.parametrize("override", ["blocks.core.gate=null", "blocks.core.gate=", "blocks.core.gate=~"])
def test_null_on_the_command_line_removes_the_key(base, override):
    assert "gate" not in core_of(base, override)


def test_null_removal_lets_the_schema_default_apply_again(cli, base):
    rc, out, _ = cli(
        "params", "--json", "base.yaml", "--set", "train=null", "--set", "blocks.core.state_mix=null"
    )
    assert rc == 0
    assert "state_mix" not in {b["name"] for b in json.loads(out)["blocks"]}


def test_set_with_a_mapping_value_replaces_the_whole_mapping(base):
    assert core_of(base, "blocks.core.gate={kind: residual}")["gate"] == {"kind": "residual"}


def test_set_parses_its_value_as_yaml(base):
    core = core_of(base, "blocks.core.state_mix.init=[0.2, 0.3, 0.5]", "blocks.core.shared=false")
    assert core["state_mix"]["init"] == [0.2, 0.3, 0.5] and core["shared"] is False


def test_set_can_index_into_a_list(base):
    assert core_of(base, "blocks.core.state_mix.init.1=0.5")["state_mix"]["init"] == [1.0, 0.5, 0.0]


def test_set_creates_the_mappings_on_its_path(base):
    assert load(base, ["train.data.val_fraction=0.1"]).data["train"]["data"] == {"val_fraction": 0.1}


def test_extends_chains_resolve_through_every_file(write_spec, base):
    write_spec(
        """
        name: middle
        extends: base.yaml
        blocks: {core: {loops: 3}, coda: {layers: 2}}
        """,
        "middle.yaml",
    )
    top = write_spec("""
        name: top
        extends: middle.yaml
        blocks: {core: {loops: 4}}
        """)
    data = load(top).data
    assert (data["name"], data["blocks"]["core"]["loops"], data["blocks"]["coda"]["layers"]) == ("top", 4, 2)
    assert data["blocks"]["prelude"]["layers"] == 2  # from the bottom of the chain


def test_extends_is_relative_to_the_extending_file_not_the_working_directory(
    cli, write_spec, spec_dir, base, monkeypatch
):
    write_spec(
        """
        name: nested
        extends: ../base.yaml
        """,
        "variants/nested.yaml",
    )
    (spec_dir / "elsewhere").mkdir()
    monkeypatch.chdir(spec_dir / "elsewhere")  # from here, ../base.yaml would miss
    rc, out, err = cli("validate", "../variants/nested.yaml")
    assert (rc, err) == (0, "")


# ----------------------------------------------------------------------------- positions


def test_errors_point_at_the_file_that_set_the_key(cli, write_spec, base):
    write_spec("""
        name: child
        extends: base.yaml
        blocks:
          core:
            loops: 0   # line 5
        """)
    rc, _, err = cli("validate", "spec.yaml", "--set", "blocks.coda.layers=0", "--set", "train.steps=0")
    assert rc == 2
    assert err.splitlines() == [
        "--set blocks.coda.layers=0: blocks.coda.layers: input should be greater than or equal to 1",
        "--set train.steps=0: train.steps: input should be greater than or equal to 1",
        "spec.yaml:5:5: blocks.core.loops: input should be greater than or equal to 1",
    ]


def test_an_inherited_key_is_located_in_the_base(cli, write_spec, base):
    write_spec("""
        name: child
        extends: base.yaml
        model: {max_seq_len: 8}
        train: {seq_len: 12}
        """)
    rc, _, err = cli("validate", "spec.yaml", "--set", "model.head_dim=12")
    assert rc == 2
    assert err.splitlines() == [
        "base.yaml:2:26: model.d_model: 32 is not divisible by head_dim 12",
        "spec.yaml:4:9: train.seq_len: 12 exceeds model.max_seq_len 8",
    ]


def test_a_name_is_never_inherited(cli, write_spec, base):
    write_spec("""
        extends: base.yaml
        """)
    assert cli("validate", "spec.yaml") == (2, "", "spec.yaml: name: missing required key 'name'\n")


# ----------------------------------------------------------------------------- extends errors


def test_extends_cycle_is_reported_at_the_extends_key_that_closes_it(cli, write_spec):
    write_spec(
        """
        name: a
        extends: b.yaml   # line 2
        """,
        "a.yaml",
    )
    write_spec(
        """
        name: b
        extends: a.yaml   # line 2: closes the cycle
        """,
        "b.yaml",
    )
    assert cli("validate", "a.yaml") == (
        2,
        "",
        "b.yaml:2:1: extends: extends cycle: a.yaml -> b.yaml -> a.yaml\n",
    )


def test_a_spec_cannot_extend_itself(cli, write_spec):
    write_spec("""
        name: me
        extends: spec.yaml
        """)
    assert cli("validate", "spec.yaml") == (
        2,
        "",
        "spec.yaml:2:1: extends: extends cycle: spec.yaml -> spec.yaml\n",
    )


def test_missing_extends_file_is_named_at_the_extends_key(cli, write_spec):
    write_spec("""
        name: orphan
        extends: cart_base.yaml   # line 2
        """)
    assert cli("validate", "spec.yaml") == (2, "", "spec.yaml:2:1: extends: no such file: cart_base.yaml\n")


@pytest.mark.parametrize("value", ["3", "[base.yaml]", "''"])
def test_extends_must_be_a_path(cli, write_spec, value):
    write_spec(f"""
        name: t
        extends: {value}
        """)
    assert cli("validate", "spec.yaml") == (
        2,
        "",
        "spec.yaml:2:1: extends: must be a path to another spec file\n",
    )


def test_extends_chains_are_bounded(cli, write_spec, base):
    previous = "base.yaml"
    for i in range(16):
        write_spec(f"name: s{i}\nextends: {previous}\n", f"s{i}.yaml")
        previous = f"s{i}.yaml"
    assert cli("validate", "s14.yaml")[0] == 0  # 16 files in all
    assert cli("validate", "s15.yaml") == (
        2,
        "",
        "s0.yaml:2:1: extends: extends chain deeper than 16 files\n",
    )


# ----------------------------------------------------------------------------- --set errors


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loops", "--set loops: expected dotted.path=value"),
        ("=4", "--set =4: bad path ''"),
        ("blocks..loops=4", "--set blocks..loops=4: bad path 'blocks..loops'"),
        ("blocks.core.=4", "--set blocks.core.=4: bad path 'blocks.core.'"),
        (
            "extends=other.yaml",
            "--set extends=other.yaml: extends: extends cannot be set from the command line",
        ),
        ("name.first=x", "--set name.first=x: name.first: name is a value, not a mapping"),
        (
            "blocks.core.state_mix.init.3=1",
            "--set blocks.core.state_mix.init.3=1: blocks.core.state_mix.init.3: "
            "blocks.core.state_mix.init is a list of 3; no item '3'",
        ),
        (
            "blocks.core.state_mix.init.first=1",
            "--set blocks.core.state_mix.init.first=1: blocks.core.state_mix.init.first: "
            "blocks.core.state_mix.init is a list of 3; no item 'first'",
        ),
        (
            "blocks.core.loops=[4",
            "--set blocks.core.loops=[4: blocks.core.loops: value is not valid YAML: "
            "expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_bad_set_paths_and_values_are_one_located_line(cli, base, override, message):
    assert cli("validate", "base.yaml", "--set", override) == (2, "", message + "\n")


def test_set_of_an_unknown_key_suggests_the_known_one(cli, base):
    assert cli("validate", "base.yaml", "--set", "blocks.core.lops=4") == (
        2,
        "",
        "--set blocks.core.lops=4: blocks.core.lops: unknown key 'lops' (did you mean 'loops'?)\n",
    )


def test_set_of_a_wrong_value_is_located_at_the_set(cli, base):
    assert cli("validate", "base.yaml", "--set", "blocks.core.loops=many") == (
        2,
        "",
        "--set blocks.core.loops=many: blocks.core.loops: input should be a valid integer, got 'many'\n",
    )


def test_a_mapping_created_by_set_is_located_at_the_set(cli, base):
    assert cli("validate", "base.yaml", "--set", "share.0=x") == (
        2,
        "",
        "--set share.0=x: share: input should be a valid list\n",
    )


def test_flow_nesting_is_accepted_up_to_64_levels_and_refused_past_them(tmp_path):
    """The limit is exact: 64 nested flow collections load, 65 are one located problem."""
    from cartspec.errors import SpecError
    from cartspec.loader import read_yaml

    at_limit = tmp_path / "at_limit.yaml"
    at_limit.write_text("description: " + "[" * 64 + "]" * 64 + "\n")
    assert read_yaml(at_limit).data["description"] is not None
    past = tmp_path / "past.yaml"
    past.write_text("description: " + "[" * 65 + "]" * 65 + "\n")
    with pytest.raises(SpecError, match="nested too deeply"):
        read_yaml(past)
