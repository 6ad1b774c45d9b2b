"""The shipped sweeps and the committed small-scale study."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "specs" / "sweeps").glob("*.yaml"))
STUDY = ROOT / "bench" / "results" / "cpu_study"


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_plans_through_the_cli(cli, sweep, tmp_path):
    rc, out, err = cli("sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "out"))
    assert (rc, err) == (0, "")
    assert out.splitlines()[-1].startswith("total: ")


def test_the_committed_study_report_is_what_report_writes_from_its_database(cli, tmp_path):
    rc, _, err = cli("report", str(STUDY), "-o", str(tmp_path))
    assert (rc, err) == (0, "")
    assert (tmp_path / "report.md").read_text() == (STUDY / "report.md").read_text()


def test_the_readme_states_the_study_s_verdicts_as_its_report_does():
    """Every claim row of the README's study table is a row of the committed report's claims."""
    readme = (ROOT / "README.md").read_text().split("## What the small-scale study shows", 1)[1]
    report = (STUDY / "report.md").read_text().split("## Claims", 1)[1].split("\n## ", 1)[0]
    verdicts = {
        cells[0]: (cells[4], cells[6])
        for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in report.splitlines())
        if len(cells) == 7
    }
    rows = [line for line in readme.split("\n## ", 1)[0].splitlines() if line.startswith("| ")][2:]
    assert len(rows) >= 10
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        claim, figure, verdict = cells[0], cells[2], cells[3]
        assert verdicts[claim] == (figure, verdict), claim
