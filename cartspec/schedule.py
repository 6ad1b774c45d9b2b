"""The training depth schedule as numbers (no torch): the distribution of loop counts a
``train.depth`` recipe draws from, and what it costs.

Training FLOPs follow the schedule: a loop run without gradients costs its forward pass only,
a loop with gradients forward and backward (3x). Per-sequence depths compute as many loops as
the longest sequence of a micro-batch, so their cost is that of the batch maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cartspec.schema import Depth, Spec

_QUADRATURE = 801  # points of the lognormal integral over [-8, 8] standard deviations


@dataclass(frozen=True)
class Schedule:
    """A depth recipe with its defaults made concrete."""

    kind: str
    mean: float
    sigma: float
    min: int
    max: int
    per: str
    backprop: int | None

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed" and self.backprop is None

    def pmf(self) -> dict[int, float]:
        """P(depth = n) for n in min..max (the draws outside are clipped onto the ends)."""
        if self.kind == "fixed":
            return {self.min: 1.0}
        if self.kind == "uniform":
            n = self.max - self.min + 1
            return {d: 1 / n for d in range(self.min, self.max + 1)}
        raw = _poisson_pmf(self.mean, self.max) if self.kind == "poisson" else _poisson_lognormal_pmf(self)
        out = {d: raw.get(d, 0.0) for d in range(self.min, self.max + 1)}
        out[self.min] += sum(p for d, p in raw.items() if d < self.min)
        out[self.max] += max(0.0, 1.0 - sum(out.values()))  # the tail beyond max
        return out

    def split(self, depth: int) -> tuple[int, int]:
        """(loops without gradients, loops with gradients) of one draw."""
        with_grad = depth if self.backprop is None else min(depth, self.backprop)
        return depth - with_grad, with_grad

    def expected_split(self, batch: int) -> tuple[float, float]:
        """Expected loops without and with gradients that a micro-batch of ``batch`` computes."""
        pmf = self.pmf()
        draws = 1 if self.per == "step" else batch
        return _expected_max(pmf, lambda d: self.split(d)[0], draws), _expected_max(
            pmf, lambda d: self.split(d)[1], draws
        )

    @property
    def mean_depth(self) -> float:
        return sum(d * p for d, p in self.pmf().items())


def schedule(spec: Spec) -> Schedule | None:
    """The spec's depth schedule; None for a model without a loop."""
    core = spec.blocks.core
    if core is None:
        return None
    d: Depth = spec.train.depth
    if d.kind == "fixed":
        return Schedule("fixed", core.loops, d.sigma, core.loops, core.loops, d.per, d.backprop)
    mean = float(d.mean if d.mean is not None else core.loops)
    return Schedule(
        d.kind, mean, d.sigma, d.min, default_max(spec) if d.max is None else d.max, d.per, d.backprop
    )


def default_max(spec: Spec) -> int:
    """The loop table's rows, else twice the mean (Huginn's "could unfold to" bound), at least min."""
    core, d = spec.blocks.core, spec.train.depth
    if core.loop_embedding is not None and core.loop_embedding.rows is not None:
        return core.loop_embedding.rows
    mean = d.mean if d.mean is not None else core.loops
    return max(d.min, math.ceil(2 * mean))


def _poisson_pmf(lam: float, top: int, shift: int = 0) -> dict[int, float]:
    """P(Poisson(lam) + shift = n) for n up to ``top``."""
    return {
        k + shift: math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)) if lam > 0 else float(k == 0)
        for k in range(0, max(top - shift, 0) + 1)
    }


def _poisson_lognormal_pmf(s: Schedule) -> dict[int, float]:
    """P(Poisson(tau) + 1 = n), tau ~ LogNormal(ln(mean) - sigma^2/2, sigma): E[tau] = mean."""
    mu = math.log(s.mean) - s.sigma**2 / 2
    out: dict[int, float] = {}
    step = 16 / (_QUADRATURE - 1)
    for i in range(_QUADRATURE):
        z = -8 + i * step
        weight = math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * step
        for n, p in _poisson_pmf(math.exp(mu + s.sigma * z), s.max, shift=1).items():
            out[n] = out.get(n, 0.0) + weight * p
    return out


def _expected_max(pmf: dict[int, float], f, draws: int) -> float:
    """E[max of f(depth) over ``draws`` independent depths]."""
    values: dict[int, float] = {}
    for d, p in pmf.items():
        values[f(d)] = values.get(f(d), 0.0) + p
    below, total = 0.0, 0.0
    for v in sorted(values):
        before = below**draws
        below += values[v]
        total += v * (min(below, 1.0) ** draws - before)
    return total
