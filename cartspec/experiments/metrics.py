"""A finished or interrupted run's logged metrics, read back from its run folder (no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cartspec.runtime.rundir import METRICS


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics file (an unfinished last line is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


@dataclass(frozen=True)
class Final:
    """A run's last values, read from its metrics."""

    step: int | None
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    rho: float | None


def final(records: list[dict[str, Any]]) -> Final:
    def last(key: str) -> Any:
        return next((r[key] for r in reversed(records) if r.get(key) is not None), None)

    return Final(last("step"), last("loss"), last("val_loss"), last("val_ppl"), last("rho"))
