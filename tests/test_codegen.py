"""Compiling specs into code: deterministic bytes, the CI drift check, clean standalone source, and no
way for a spec to put code of its own into the generated module."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gen_helpers import CART_TINY, GENERATED, ROOT, SHIPPED, VARIANTS, compile_variant

from cartspec.codegen.render import render
from cartspec.resolve import resolve


def shipped_names() -> set[str]:
    return {f"{resolve(ROOT / spec).spec.name}.py" for spec in SHIPPED}


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory) -> list[Path]:
    """Every small variant of tests/gen_helpers.VARIANTS, compiled into one folder."""
    out = tmp_path_factory.mktemp("codegen_variants")
    for label, (spec, sets) in VARIANTS.items():
        compile_variant(out, label, sets, spec)
    return sorted(out.glob("*.py"))


# ----------------------------------------------------------------------------- determinism


def test_rendering_a_spec_twice_gives_identical_text(monkeypatch):
    monkeypatch.chdir(ROOT)
    for spec in SHIPPED:
        assert render(resolve(spec)) == render(resolve(spec)), spec


def test_compile_writes_identical_bytes_under_different_hash_seeds(run_cli, tmp_path):
    written = []
    for seed in ("0", "123"):
        out = tmp_path / f"seed{seed}"
        rc, _, err = run_cli("compile", "-o", str(out), *SHIPPED, env={"PYTHONHASHSEED": seed})
        assert (rc, err) == (0, "")
        written.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert set(written[0]) == shipped_names()
    assert written[0] == written[1]


# ----------------------------------------------------------------------------- drift check (CI)


def test_committed_generated_files_match_their_specs(cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = cli("compile", "--check", *SHIPPED)
    assert rc == 0, out + err  # on failure: the diff; run `cartspec compile specs/**/*.yaml`
    assert out.strip() == f"ok  {len(SHIPPED)} generated files up to date"


def test_generated_folder_holds_one_file_per_shipped_spec_and_nothing_else():
    assert {p.name for p in GENERATED.glob("*.py")} == shipped_names()


def test_check_exits_1_with_a_unified_diff_when_a_file_is_stale(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    stale = tmp_path / "cart_tiny.py"
    text = (GENERATED / "cart_tiny.py").read_text()
    assert "    loops: int = 4  # R\n" in text
    stale.write_text(text.replace("    loops: int = 4  # R\n", "    loops: int = 5  # R\n"))
    before = stale.read_bytes()

    rc, out, err = cli("compile", "--check", "-o", str(tmp_path), "specs/tiny/cart_tiny.yaml")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ ") and lines[2].startswith("@@ ")
    assert "-    loops: int = 5  # R" in lines and "+    loops: int = 4  # R" in lines
    assert "1 of 1 generated files are missing or out of date" in err
    assert stale.read_bytes() == before  # --check writes nothing
    assert [p.name for p in tmp_path.iterdir()] == ["cart_tiny.py"]


def test_check_exits_1_when_a_file_is_missing_and_writes_nothing(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    rc, out, err = cli("compile", "--check", "-o", str(tmp_path), "specs/tiny/cart_tiny.yaml")
    assert rc == 1
    assert "cart_tiny.py: missing" in out
    assert "1 of 1 generated files are missing or out of date" in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- hygiene


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_generated_code_is_ruff_format_and_ruff_check_clean(variant_files):
    files = [str(p) for p in sorted(GENERATED.glob("*.py")) + variant_files]
    fmt = ruff("format", "--check", "--diff", *files)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = ruff("check", *files)
    assert lint.returncode == 0, lint.stdout + lint.stderr


STDLIB = set(sys.stdlib_module_names)


def top_level_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in a standalone module"
            names.add(node.module.split(".")[0])
    return names


def test_generated_modules_import_only_torch_and_the_standard_library(variant_files):
    for path in sorted(GENERATED.glob("*.py")) + variant_files:
        imports = top_level_imports(path.read_text())
        assert "torch" in imports, path
        assert imports - {"torch"} <= STDLIB, f"{path.name}: {sorted(imports - {'torch'} - STDLIB)}"


def test_generated_modules_start_with_a_do_not_edit_banner_naming_their_spec():
    for spec in SHIPPED:
        name = resolve(ROOT / spec).spec.name
        head = (GENERATED / f"{name}.py").read_text().splitlines()[:3]
        assert head[0] == f"# Generated by cartspec 0.1.0 from {spec}. Do not edit by hand:"
        assert all(line.startswith("# ") for line in head)


# ----------------------------------------------------------------------------- safety


def spec_text(fields: dict) -> str:
    """A spec extending cart_tiny with ``fields`` (dotted paths) set, written as one JSON document (YAML
    reads JSON), so the hostile strings reach the loader exactly as written here; inf and nan are
    written the YAML way."""
    data: dict = {"extends": CART_TINY.as_posix()}
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return json.dumps(data, indent=2).replace("Infinity", ".inf").replace("NaN", ".nan")


INJECTIONS = {
    "name_breaks_out_of_a_string": {"name": 'x"; import os; #'},
    "name_with_a_newline": {"name": "x\nimport os"},
    "attention_kind_with_a_newline": {"name": "evil", "blocks.core.attention.kind": "mla\nimport os"},
    "cross_attention_target_with_quotes": {
        "name": "evil",
        "blocks.core.attention.to": "anchor'); import os; ('",
    },
    "anchor_source_with_a_newline": {"name": "evil", "blocks.anchor.from": "prelude\nimport os"},
    "share_group_name_with_quotes": {
        "name": "evil",
        "share": [{"name": "albert'; import os; '", "members": ["prelude.*"]}],
    },
    "share_member_with_quotes": {
        "name": "evil",
        "share": [{"name": "albert", "members": ['prelude.0"); import os; ("', "prelude.1"]}],
    },
    "ffn_kind_with_code": {"name": "evil", "model.ffn.kind": "swiglu\nimport os"},
    # a number that reaches the source must be one Python can read back: inf/nan would not be
    "non_finite_blend_weight": {"name": "evil", "blocks.core.state_mix.init": [float("inf"), 0.0, 0.0]},
    "nan_blend_weight": {"name": "evil", "blocks.core.state_mix.init": [float("nan"), 0.0, 0.0]},
}


@pytest.mark.parametrize("case", INJECTIONS)
def test_a_spec_string_that_would_inject_code_is_rejected_and_nothing_is_written(cli, spec_dir, case):
    (spec_dir / "spec.yaml").write_text(spec_text(INJECTIONS[case]))
    rc, out, err = cli("compile", "spec.yaml", "-o", "out")
    assert rc == 2, out + err
    assert err.startswith("spec.yaml:"), err  # a located line, no traceback
    assert "Traceback" not in err
    assert not (spec_dir / "out").exists()


def test_a_set_override_that_would_inject_code_is_rejected(cli, spec_dir):
    rc, _, err = cli("compile", str(CART_TINY), "--set", 'name=x"; import os; #', "-o", "out")
    assert rc == 2 and "name" in err
    assert not (spec_dir / "out").exists()


def test_a_python_yaml_tag_is_rejected(cli, spec_dir):
    (spec_dir / "spec.yaml").write_text(f"extends: {CART_TINY.as_posix()}\nname: !!python/name:os.system\n")
    rc, _, err = cli("compile", "spec.yaml", "-o", "out")
    assert rc == 2 and "Traceback" not in err
    assert not (spec_dir / "out").exists()


def test_a_spec_file_name_cannot_inject_code_through_the_banner(cli, spec_dir):
    """The banner names the spec file; a newline in that name must not end the comment."""
    hostile = spec_dir / "e\nimport os\nos.getcwd()\nx.yaml"
    shutil.copy(CART_TINY, hostile)
    rc, out, err = cli("compile", hostile.name, "-o", "out")
    if rc != 0:  # refusing such a file name is fine too
        assert rc == 2 and not (spec_dir / "out").exists()
        return
    text = (spec_dir / "out" / "cart_tiny.py").read_text()
    banner = text[: text.index('"""')].rstrip("\n").splitlines()
    assert all(line.startswith("#") for line in banner), banner
    assert "os" not in top_level_imports(text)
