"""Seeds of one config (no torch, no scipy).

Runs that differ only in ``train.seed`` form a group, labelled by their id without the seed's
part (``unfrozen_kv_s2`` -> ``unfrozen_kv``; the grid's own seeds ``s1, s2, s3`` -> ``base``). A
group's figure is the mean over its seeds with the sample standard deviation as its spread. Two
groups differ when Welch's 95% interval for the difference of their means excludes zero: with
three seeds a side that takes a difference of about three standard deviations, which is what
"outside the seed spread" should mean at this sample size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any

from cartspec.experiments.overrides import grid_id
from cartspec.experiments.store import Row

SEED = "train.seed"

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom; a fractional Welch df
# is rounded down, which widens the interval a little rather than narrowing it.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}  # fmt: skip


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t at ``df`` degrees of freedom (rounded down to the table)."""
    return T975[max([k for k in T975 if k <= max(df, 1)])] if df < 1000 else 1.960


def label(run_id: str, grid: dict[str, Any]) -> str:
    """The group a run belongs to: its id without the part its seed gave it."""
    if SEED not in grid:
        return run_id
    seed_part = grid_id({SEED: grid[SEED]})
    return "_".join(p for p in run_id.split("_") if p != seed_part) or "base"


@dataclass(frozen=True)
class Group:
    """The finished runs of one config over its seeds (a single run is a group of one)."""

    label: str
    runs: tuple[Row, ...]

    @property
    def first(self) -> Row:
        return self.runs[0]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def values(self, get: Callable[[Row], float | None]) -> list[float]:
        return [v for v in map(get, self.runs) if v is not None]


def groups(runs: Sequence[Row]) -> list[Group]:
    """Runs grouped over seeds, in the order their first run appears."""
    found: dict[str, list[Row]] = {}
    for r in runs:
        found.setdefault(label(r.id, r.grid_values), []).append(r)
    return [Group(name, tuple(members)) for name, members in found.items()]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (sd is None for one seed)."""

    mean: float
    sd: float | None
    n: int


def stat(xs: Sequence[float]) -> Stat | None:
    if not xs:
        return None
    return Stat(fmean(xs), stdev(xs) if len(xs) > 1 else None, len(xs))


def interval(a: Sequence[float], b: Sequence[float] | None = None) -> tuple[float, float] | None:
    """Welch's 95% interval for mean(a) - mean(b), or the one-sample interval of mean(a) when
    ``b`` is None; None when a side has fewer than two seeds."""
    if len(a) < 2 or (b is not None and len(b) < 2):
        return None
    va = stdev(a) ** 2 / len(a)
    if b is None:
        diff, se, df = fmean(a), math.sqrt(va), len(a) - 1
    else:
        vb = stdev(b) ** 2 / len(b)
        diff, se = fmean(a) - fmean(b), math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1
    half = t975(df) * se
    return diff - half, diff + half


def decimals(spread: float | None, scale: float = 1.0, most: int = 4) -> int:
    """Digits after the point that a figure with this spread deserves: the spread's first
    significant digit is the last one shown (``scale`` converts to the shown unit, e.g. 100 for %)."""
    if spread is None or spread <= 0 or not math.isfinite(spread):
        return most
    return min(most, max(0, -math.floor(math.log10(spread * scale))))


def mean_sd(s: Stat | None, most: int = 4) -> str:
    """``4.93 ± 0.02`` (no more digits than the spread supports), or the single value."""
    if s is None:
        return "–"
    if s.sd is None:
        return f"{s.mean:.{most}f}"
    d = decimals(s.sd, most=most)
    return f"{s.mean:.{d}f} ± {s.sd:.{d}f}"
