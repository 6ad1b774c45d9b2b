"""A sweep's claims, tested over seeds (no torch).

Each claim names a variant group, usually a base group, a measure and the direction the
difference (variant - base) should take. The figure is the difference of the seed means with
Welch's 95% interval; the verdict reads only that interval:

- ``lower`` / ``higher``: holds when the interval lies wholly on that side of zero, does not hold
  when it lies wholly on the other, and is not resolved at this scale when it straddles zero;
- ``same`` (the paper's "within noise"): holds when the interval contains zero;
- ``differs``: holds when it excludes zero, else not resolved.

A validation-loss difference is shown as a perplexity ratio, exp(difference) - 1, the way the
CART paper states its gaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cartspec.experiments.seeds import Group, decimals, interval
from cartspec.experiments.store import Row

Evals = dict[str, list[tuple[int, float, float]]]

NOT_ENOUGH = "not resolved (fewer than 2 seeds)"


def _loop_losses(r: Row, evals: Evals) -> dict[int, float]:
    return {n: loss for n, loss, _ in evals.get(r.id, [])}


def _loop_range(r: Row, evals: Evals) -> float | None:
    losses = _loop_losses(r, evals)
    return max(losses.values()) - min(losses.values()) if len(losses) > 1 else None


def _loop_peak(r: Row, evals: Evals) -> float | None:
    losses = _loop_losses(r, evals)
    others = [loss for n, loss in losses.items() if n != r.loops]
    return min(others) - losses[r.loops] if r.loops in losses and others else None


MEASURES: dict[str, Callable[[Row, Evals], float | None]] = {
    "val_loss": lambda r, evals: r.val_loss,
    "rho": lambda r, evals: r.rho,
    "loop_range": _loop_range,
    "loop_peak": _loop_peak,
}


@dataclass(frozen=True)
class Outcome:
    """A claim's figure (with its interval) and verdict."""

    figure: str
    seeds: str
    verdict: str


def verdict(expect: str, ci: tuple[float, float] | None) -> str:
    if ci is None:
        return NOT_ENOUGH
    lo, hi = ci
    straddles = lo <= 0 <= hi
    if expect == "same":
        return "holds: no difference resolved" if straddles else "does not hold"
    if straddles:
        return "not resolved at this scale"
    if expect == "differs":
        return "holds"
    return "holds" if (hi < 0) == (expect == "lower") else "does not hold"


def signed(x: float, d: int, percent: bool = False) -> str:
    """``x`` with a sign and ``d`` decimals (as a percentage when ``percent``); never "-0"."""
    scale = 100 if percent else 1
    if round(x * scale, d) == 0:
        x = 0.0
    return f"{x:+.{d}%}" if percent else f"{x:+.{d}f}"


def _shown(measure: str, x: float, d: int) -> str:
    return signed(math.expm1(x), d, percent=True) if measure == "val_loss" else signed(x, d)


def _figure(measure: str, diff: float, ci: tuple[float, float] | None) -> str:
    """The difference, with no more digits than its interval supports."""
    if ci is None:
        return _shown(measure, diff, 2 if measure == "val_loss" else 4)
    percent = measure == "val_loss"
    lo, hi = (math.expm1(x) for x in ci) if percent else ci
    d = decimals((hi - lo) / 2, scale=100 if percent else 1)
    return f"{_shown(measure, diff, d)} (95% CI {_shown(measure, ci[0], d)} to {_shown(measure, ci[1], d)})"


def evaluate(claim: dict[str, Any], groups: dict[str, Group], evals: Evals) -> Outcome:
    """One claim's figure and verdict from the finished runs of its groups."""
    get = MEASURES[claim["measure"]]
    variant = groups.get(claim["variant"])
    base = groups.get(claim["base"]) if claim.get("base") else None
    if variant is None or (claim.get("base") and base is None):
        return Outcome("–", "0", "not run yet")
    a = variant.values(lambda r: get(r, evals))
    b = base.values(lambda r: get(r, evals)) if base is not None else None
    if not a or (b is not None and not b):
        return Outcome("–", "0", "not run yet")
    diff = sum(a) / len(a) - (sum(b) / len(b) if b is not None else 0.0)
    ci = interval(a, b)
    seeds = f"{len(a)}" if b is None else f"{len(a)} vs {len(b)}"
    return Outcome(_figure(claim["measure"], diff, ci), seeds, verdict(claim["expect"], ci))
