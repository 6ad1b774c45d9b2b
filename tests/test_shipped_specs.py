"""Every shipped spec goes through the real CLI, as a user runs it (litgpt style).

``specs/**/*.yaml`` except ``specs/sweeps/`` (sweep files describe many runs, not one model).
The whole-process runs are started together, one per CPU, and each test reads its own result.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"

SHIPPED = sorted(
    p.relative_to(ROOT).as_posix()
    for p in SPECS.rglob("*.yaml")
    if "sweeps" not in p.relative_to(SPECS).parts
)
COMMANDS = {"validate": ("validate",), "params": ("params", "--json")}


@pytest.fixture(scope="module")
def process_results(run_cli) -> dict[tuple[str, str], tuple[int, str, str]]:
    """(spec, command) -> (rc, stdout, stderr) of ``python -m cartspec COMMAND SPEC`` from the repo root."""
    jobs = [(spec, name) for spec in SHIPPED for name in COMMANDS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(lambda job: run_cli(*COMMANDS[job[1]], job[0]), jobs)
        return dict(zip(jobs, results, strict=True))


def name_of(spec: str) -> str:
    """The spec's own name: it is never inherited, so it is in the file itself."""
    return yaml.safe_load((ROOT / spec).read_text())["name"]


def test_the_sweep_finds_the_papers_specs():
    expected = {f"specs/cart_d{d}.yaml" for d in (256, 512, 768, 1024)} | {
        "specs/dense_d1024.yaml",
        "specs/dense_d1024_12l.yaml",
        "specs/tiny/cart_tiny.yaml",
    }
    assert expected <= set(SHIPPED)


def test_shipped_spec_names_are_their_file_names_so_generated_files_cannot_collide():
    assert [name_of(s) for s in SHIPPED] == [Path(s).stem for s in SHIPPED]


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_spec_validates(process_results, spec):
    rc, out, err = process_results[(spec, "validate")]
    assert (rc, err) == (0, "")
    assert out.startswith(f"ok  {spec}  ({name_of(spec)}: ")


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_spec_reports_consistent_params_as_json(process_results, spec):
    rc, out, err = process_results[(spec, "params")]
    assert (rc, err) == (0, "")
    report = json.loads(out)
    assert report["name"] == name_of(spec)
    assert 0 < report["stored"] <= report["effective_paper"] <= report["effective"]
    assert report["stored"] == sum(b["stored"] for b in report["blocks"])
    assert report["effective"] == sum(b["effective"] for b in report["blocks"])
    assert report["flops"]["forward_per_sequence"] > 0


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_spec_graph_has_one_node_per_use_in_every_format(cli, spec):
    rc, text, _ = cli("graph", str(ROOT / spec))
    assert rc == 0
    header, *lines = text.splitlines()
    uses = int(header.split(": ")[1].split()[0])
    assert len(lines) == uses
    rc, dot, _ = cli("graph", str(ROOT / spec), "--format", "dot")
    assert rc == 0 and dot.startswith(f'digraph "{name_of(spec)}"') and dot.count("[label=") == uses
    rc, out, _ = cli("graph", str(ROOT / spec), "--format", "json")
    assert rc == 0 and len(json.loads(out)["nodes"]) == uses


def test_params_prints_the_papers_figures_for_cart_d1024(run_cli):
    rc, out, err = run_cli("params", "specs/cart_d1024.yaml")
    assert (rc, err) == (0, "")
    rows = {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines()}
    assert "125,093,891" in rows["stored"]
    assert "179,012,626" in rows["effective"]
    assert "178,843,651" in rows["effective (paper)"]
    assert "355.0 G" in rows["forward FLOPs / seq"]
