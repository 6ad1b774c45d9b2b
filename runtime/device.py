"""The device a command runs on, the precision it computes in, and what it delivers: a matmul
rate measured here, the peak memory a run has used."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from cartspec.errors import UserError
from cartspec.schema import Spec


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device that is
    not here is a user error, not a crash at the first tensor."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def autocast(spec: Spec, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (precision auto or bf16); float32 otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if _bf16(spec, device) else nullcontext()


def _bf16(spec: Spec, device: torch.device) -> bool:
    return spec.train.precision == "bf16" or (spec.train.precision == "auto" and device.type == "cuda")


def matmul_rate(spec: Spec, device: torch.device, seconds: float = 0.1) -> tuple[float, str]:
    """FLOP/s of a matmul shaped like the model's feed-forward (a micro-batch's tokens x d x 4d,
    clamped to sizes that time well), in the training precision, timed on ``device`` for about
    ``seconds``; and the shape, to say what was measured."""
    cpu = device.type == "cpu"  # a CPU takes a second for what a GPU does in a millisecond
    rows = min(max(spec.train.micro_batch * spec.seq_len, 1024), 1024 if cpu else 8192)
    inner = min(max(spec.model.d_model, 256), 256 if cpu else 4096)
    cols = min(4 * inner, 1024 if cpu else 16384)
    dtype = torch.bfloat16 if _bf16(spec, device) else torch.float32
    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(inner, cols, device=device, dtype=dtype)
    a @ b  # the first call sets up the backend (cuBLAS handles, thread pools): untimed
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        a @ b
        calls += 1
        _sync(device)
    rate = 2 * rows * inner * cols * calls / (time.perf_counter() - start)
    if device.type == "cuda":  # the run's peak_memory_mb is the run's, not this probe's
        del a, b
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return rate, f"{rows}x{inner}x{cols}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held: the CUDA allocator's peak on a GPU, else the
    process's peak resident set (what the machine had to give it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def machine(device: torch.device) -> dict[str, Any]:
    """A run's env.json entries that need torch: its version, the device and the GPU's name."""
    return {
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
