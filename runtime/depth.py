"""Drawing each training step's loop count from the spec's depth schedule.

Every draw is seeded from the run's seed and a key (the step, or a sequence's global window
position), never from a shared random stream: every rank of a data-parallel run, and a resumed
run, draws exactly the depths one uninterrupted process draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cartspec.schedule import Schedule

_DEPTH_STREAM = 0x6C6F6F70  # separates these draws from any other use of the run's seed


class DepthDraws:
    """The model arguments (loops, per-sequence depths, gradient loops) of each micro-batch."""

    def __init__(self, schedule: Schedule, seed: int):
        self.schedule, self.seed = schedule, seed

    def draw(self, key: int) -> int:
        """One depth, a pure function of the run's seed and ``key``."""
        s = self.schedule
        rng = np.random.default_rng([self.seed, _DEPTH_STREAM, key])
        if s.kind == "fixed":
            depth = s.min
        elif s.kind == "uniform":
            depth = int(rng.integers(s.min, s.max + 1))
        elif s.kind == "poisson":
            depth = int(rng.poisson(s.mean))
        else:  # poisson_lognormal, as Huginn draws it: E[tau] = mean
            tau = rng.lognormal(np.log(s.mean) - s.sigma**2 / 2, s.sigma)
            depth = int(rng.poisson(tau)) + 1
        return min(max(depth, s.min), s.max)

    def depths(self, step: int, positions: np.ndarray) -> list[int]:
        """The depth of each sequence at these global window positions in ``step``."""
        if self.schedule.per == "step":
            return [self.draw(step)] * len(positions)
        return [self.draw(int(p)) for p in positions]

    def model_args(self, step: int, positions: np.ndarray, device: torch.device) -> dict[str, Any]:
        """Keyword arguments of the model's forward for one micro-batch."""
        args: dict[str, Any] = {}
        if self.schedule.backprop is not None:
            args["grad_loops"] = self.schedule.backprop
        depths = self.depths(step, positions)
        if self.schedule.per == "step":
            args["loops"] = depths[0]
        else:
            args["depths"] = torch.tensor(depths, device=device)
        return args

    def record(self, step: int, positions: np.ndarray) -> tuple[int, float]:
        """(loops computed, mean depth) over a step's whole global batch, for metrics.jsonl."""
        depths = self.depths(step, positions)
        return max(depths), sum(depths) / len(depths)
