"""What a training prints while it runs, on rank 0's stderr: first a line saying what is about to
happen and about how long it will take, then a rich progress bar on a terminal or, where stderr
is a batch job's log, one plain line per metrics line (step, loss, lr, tokens/s, ETA)."""

from __future__ import annotations

import datetime
import sys
import time
from typing import IO, Any

import torch

from cartspec.console import human
from cartspec.resolve import Resolved
from cartspec.runtime.device import matmul_rate
from cartspec.throughput import duration, train_flops_per_token

MODES = ("bar", "lines", "off")
# A training step of cart_tiny or dense_tiny ran at 0.58-0.62 of the rate of its feed-forward
# matmul alone on a CPU; the estimate assumes half.
STEP_SHARE_OF_MATMUL = 0.5


def opening_line(
    resolved: Resolved, device: torch.device, devices: int, start: int, stop: int, init_from: str | None
) -> str:
    """What the run is about to do and an estimate of how long, from the training FLOPs that
    accounting computes and a matmul timed on this device (a fraction of a second)."""
    spec, data = resolved.spec, resolved.spec.train.data
    if stop <= start:
        return f"{spec.name}: already at step {start}; preparing data, nothing left to train"
    flops = train_flops_per_token(resolved) * spec.tokens_per_step * (stop - start)
    rate, shape = matmul_rate(spec, device)
    seconds = flops / (rate * STEP_SHARE_OF_MATMUL * devices)
    steps = f"steps {start + 1} to {stop}" if start else f"{stop} steps"
    where = f"{devices} x {device.type}" if devices > 1 else str(device)
    weights = f" from the weights of {init_from}" if init_from else ""
    return (
        f"{spec.name}: preparing data ({data.source}, {data.tokenizer} tokenizer), then training "
        f"{steps} of {spec.tokens_per_step:,} tokens on {where}{weights}: about {duration(seconds)} "
        f"(an estimate: {human(flops)} training FLOPs at half the {rate / 1e9:,.1f} GFLOP/s "
        f"a {shape} matmul reached here)"
    )


class Progress:
    """``bar``: a rich bar moved every step; ``lines``: one line per metrics record, flushed at
    once; ``off``: silent (tests, sweeps, ranks other than 0)."""

    def __init__(self, mode: str, start: int, stop: int, name: str, stream: IO[str] | None = None):
        self.mode, self.start, self.stop, self.name = mode, start, stop, name
        self.stream = stream if stream is not None else sys.stderr
        self.began = time.perf_counter()
        self.bar = None
        if mode != "bar":
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(f"[bold]{name}[/bold]"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=stop, completed=start, loss=float("nan"), tps=0.0)

    def update(self, done: int, loss: float, tps: float) -> None:
        """After every step: moves the bar."""
        if self.bar is not None:
            self.bar.update(self.task, completed=done, loss=loss, tps=tps)

    def write(self, record: dict[str, Any]) -> None:
        """After each metrics record: one plain line."""
        if self.mode == "lines":
            print(self.line(record), file=self.stream, flush=True)

    def line(self, record: dict[str, Any]) -> str:
        done = record["step"]
        parts = [f"{self.name} step {done}/{self.stop}"]
        if "loss" in record:
            parts += [
                f"loss {record['loss']:.4f}",
                f"lr {record['lr']:.3g}",
                f"tokens/s {record['tokens_per_s']:,.0f}",
            ]
            if record.get("mfu") is not None:
                parts.append(f"mfu {record['mfu']:.1%}")
        if "val_loss" in record:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        per_step = (time.perf_counter() - self.began) / max(done - self.start, 1)
        parts.append(f"eta {datetime.timedelta(seconds=round(per_step * (self.stop - done)))}")
        return "  ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
