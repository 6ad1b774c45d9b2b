"""`cartspec report`: tables and plots from a real (tiny) sweep's results.db and metrics."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys

import pytest
from matplotlib.image import imread
from sweep_helpers import ROOT, one_thread, write_mini_sweep

from cartspec.experiments import store
from cartspec.experiments.plan import plan_sweep
from cartspec.experiments.report import DPI, FIGSIZE
from cartspec.experiments.run import register, run_sweep

PLOT_SHAPE = (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI), 4)  # rows, columns, RGBA
SECTIONS = [
    "## Runs",
    "## Seed groups",
    "## Looped vs dense at stored parity",
    "## Looped vs dense at effective parity",
    "## Looped vs dense at FLOP parity",
    "## Ablations and variants against their base",
    "## Variable loop count at inference",
    "## Plots",
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished 4-config sweep: real training, real metrics."""
    folder = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("CARTSPEC_CACHE", str(tmp_path_factory.getbasetemp() / "cartspec_cache"))
        plan = plan_sweep(write_mini_sweep(folder), folder / "out")
        assert run_sweep(plan, device="cpu", echo=lambda line: None) == (4, 0)
    return folder / "out"


@pytest.fixture(scope="module")
def report(swept, tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("report_out")
    rc, stdout, stderr = cli("report", str(swept), "-o", str(out))
    assert (rc, stderr) == (0, "")
    assert stdout == f"wrote {out / 'report.md'}\n"
    return out, (out / "report.md").read_text()


def db_rows(swept) -> dict[str, sqlite3.Row]:
    with sqlite3.connect(swept / "results.db") as con:
        con.row_factory = sqlite3.Row
        return {r["id"]: r for r in con.execute("SELECT * FROM runs")}


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after ``heading``, keyed by their first cell."""
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][2:]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return {row[0]: row for row in rows}


def test_the_report_has_every_section_in_order(report):
    _, text = report
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert text.startswith("# Sweep mini\n")
    assert "4 configs: 4 done." in text


def test_the_runs_table_shows_the_real_runs_values(report, swept):
    _, text = report
    rows = table_rows(text, "## Runs")
    db = db_rows(swept)
    assert list(rows) == ["r2", "r3", "dense_stored_r3", "no_hc"]
    for run_id, row in rows.items():
        last_val = [json.loads(line) for line in (swept / "runs" / run_id / "metrics.jsonl").open()][-1]
        assert row[12] == f"{last_val['val_loss']:.4f}" == f"{db[run_id]['val_loss']:.4f}"
        assert row[2] == "done"
    assert rows["r3"][5] == "3" and rows["dense_stored_r3"][5] == "–"


def test_parity_tables_pair_each_looped_run_with_the_nearest_dense_run(report, swept):
    _, text = report
    db = db_rows(swept)
    for count in ("stored", "effective", "FLOP"):
        heading = f"## Looped vs dense at {count} parity"
        rows = table_rows(text, heading)
        assert list(rows) == ["r2", "r3", "no_hc"]
        assert {row[2] for row in rows.values()} == {"dense_stored_r3"}  # the only dense run
    stored = table_rows(text, "## Looped vs dense at stored parity")["r3"]
    gap = math.expm1(db["dense_stored_r3"]["val_loss"] - db["r3"]["val_loss"])  # the ppl ratio
    assert stored[7] == f"{gap:+.2%}"


def test_the_ablation_table_states_the_change_and_the_delta_against_its_base(report, swept):
    _, text = report
    db = db_rows(swept)
    row = table_rows(text, "## Ablations and variants against their base")["no_hc"]
    assert row[1:3] == ["r3", "`blocks.core.state_mix=null`"]
    assert row[6] == f"{math.expm1(db['no_hc']['val_loss'] - db['r3']['val_loss']):+.2%}"


def test_the_variable_loop_table_marks_the_trained_loop_count(report):
    _, text = report
    rows = table_rows(text, "## Variable loop count at inference")
    assert list(rows) == ["r2", "r3", "no_hc"]
    assert rows["r2"][4].endswith("*") and not any(c.endswith("*") for c in rows["r3"][3:])


def test_every_plot_is_a_png_of_the_expected_size(report):
    out, text = report
    images = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert images == ["loss_curves.png", "val_vs_params.png", "variable_r.png", "rho.png"]
    for name in images:
        pixels = imread(out / name)
        assert pixels.shape == PLOT_SHAPE, name
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"


def test_a_sweep_that_has_not_run_yet_still_reports(tmp_path, cli):
    out = tmp_path / "out"
    plan = plan_sweep(write_mini_sweep(tmp_path), out)
    out.mkdir()
    with store.connect(out, create=True) as con:
        register(con, plan)
    rc, _, _ = cli("report", str(out))
    assert rc == 0
    text = (out / "report.md").read_text()
    assert "4 configs: 4 pending." in text
    assert "_No finished looped runs in this sweep._" in text
    assert "_Not drawn: no metrics yet._" in text
    assert not list(out.glob("*.png"))


def test_a_folder_without_results_is_one_line_and_exit_2(cli, tmp_path):
    rc, _, stderr = cli("report", str(tmp_path))
    assert (rc, stderr) == (2, f"error: {tmp_path}: no results.db here (run `cartspec sweep` first)\n")


@pytest.mark.parametrize("content", ["empty", "foreign"])
def test_an_empty_or_foreign_results_db_is_refused_and_left_as_it_is(cli, tmp_path, content):
    """report is read-only: it used to say "0 configs" and add its tables to the file."""
    db = tmp_path / "results.db"
    if content == "empty":
        db.write_bytes(b"")
    else:
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE notes (text TEXT)")
        con.close()
    before = db.read_bytes()
    rc, _, stderr = cli("report", str(tmp_path))
    what = "an empty file" if content == "empty" else "no loop_evals, meta, runs table"
    assert (rc, stderr) == (2, f"error: {db}: not a results database of a sweep ({what}); left as it is\n")
    assert db.read_bytes() == before
    assert not (tmp_path / "report.md").exists()


PROBE = """
import contextlib, io, json, sys
from cartspec.cli import app

for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        app(args, standalone_mode=False)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")[:3]))
"""


def test_parity_dry_run_and_report_never_import_torch(swept, tmp_path):
    commands = [
        ["parity", "specs/cart_d1024.yaml", "--match", "effective"],
        ["sweep", "specs/sweeps/paper_stage2.yaml", "--dry-run"],
        ["report", str(swept), "-o", str(tmp_path)],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
