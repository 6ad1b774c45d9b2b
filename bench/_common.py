"""Shared helpers of the benchmarks: build a generated model from a spec, time a callable."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cartspec.resolve import Resolved, resolve
from cartspec.runtime.generated import compiled_module

REPO = Path(__file__).resolve().parent.parent


def generated_model(spec: str, overrides: list[str] = ()) -> tuple[Resolved, torch.nn.Module]:
    """Compile ``spec`` into a temporary folder and build its model (seeded)."""
    resolved = resolve(REPO / spec, list(overrides))
    module, _ = compiled_module(resolved, Path(tempfile.mkdtemp(prefix="cartspec-bench-")))
    torch.manual_seed(0)
    return resolved, module.Model()


def median_time(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds (fair under load)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}
