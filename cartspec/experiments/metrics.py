"""A finished or interrupted run's last logged values (no torch; the records come from
:func:`cartspec.runtime.rundir.read_metrics`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
