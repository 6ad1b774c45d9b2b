"""Runtime overhead: seconds per step of ``cartspec.runtime.loop.train()`` next to a bare loop.

Both sides train the same generated model (``specs/tiny/cart_tiny.yaml`` by default) from the same
seed on the same batches with the same AdamW settings, on the CPU in float32. The bare loops:

- ``bare``: forward, backward, ``optimizer.step()``, ``zero_grad`` on pre-built batches;
- ``bare + clip``: the same plus the spec's gradient clipping, which is part of the recipe.

What the runtime adds on top is its bookkeeping: the batch stream, setting the lr, ``loss.item()``,
metrics lines (every ``log_interval`` steps), loop statistics and the progress hook. Steps are
timed from the end of step ``--skip`` to the end of the last step, so start-up (data, model
build) and the run's final evaluation and checkpoint are left out; with the tiny spec's intervals
(100) no periodic evaluation or checkpoint falls inside the window. Repetitions are interleaved
(runtime, bare, bare + clip, runtime, ...) and the median is reported. The bare + clip loop must
reproduce the runtime's logged losses exactly, which checks that both do the same work.

    python bench/runtime_overhead.py                   # 40 steps, 3 repetitions
    python bench/runtime_overhead.py --steps 30 -r 5 --set train.seq_len=64 --threads 1
    python bench/runtime_overhead.py --threads 1 --clock cpu   # on a busy machine

A benchmark, not a test: timings depend on the machine and its load. Target: overhead < 5 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch

from cartspec.resolve import resolve
from cartspec.runtime import loop
from cartspec.runtime.data import BatchStream, prepare_data
from cartspec.runtime.generated import compiled_module, import_module
from cartspec.runtime.optim import build_optimizer, lr_at

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
TARGET = 0.05
clock = time.perf_counter  # --clock cpu: time.process_time, steadier on a machine shared with others


class StepClock:
    """Stands in for the runtime's progress bar: records when each step finished."""

    times: dict[int, float] = {}

    def __init__(self, mode: str, start: int, stop: int, name: str):
        StepClock.times = {}

    def update(self, done: int, loss: float, tps: float) -> None:
        StepClock.times[done] = clock()

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def time_runtime(resolved, cache: Path, work: Path, skip: int) -> tuple[list[float], list[float]]:
    """Seconds of each timed step of the runtime's loop, and its logged losses."""
    out = Path(tempfile.mkdtemp(dir=work))
    loop.Progress = StepClock  # the hook the loop calls after every optimizer step
    loop.train(resolved, loop.Options(out=out, device="cpu", cache_dir=cache, progress="off"))
    stamps = [StepClock.times[s] for s in range(skip, resolved.spec.train.steps + 1)]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [b - a for a, b in pairwise(stamps)], losses


def time_bare(resolved, module_path: Path, batches, clip: bool, skip: int) -> tuple[list[float], list[float]]:
    """Seconds of each timed step of forward/backward/step (and clip) on the same batches, and every loss."""
    t = resolved.spec.train
    module = import_module(module_path)
    torch.manual_seed(t.seed)
    model = module.Model()
    optimizer = build_optimizer(model, t, torch.device("cpu"))
    params = list(model.parameters())
    losses, stamps = [], []
    for step, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        _, loss = model(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        stamps.append(clock())
    return [b - a for a, b in pairwise(stamps[skip - 1 :])], [float(v) for v in losses]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=SPEC, help="a spec (default: the tiny CART)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed run (default 40)")
    parser.add_argument(
        "--skip", type=int, default=5, help="warm-up steps left out of the timing (default 5)"
    )
    parser.add_argument("-r", "--repeats", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="spec override, repeatable")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="wall time or this process's CPU time"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if not 0 < args.skip < args.steps:
        parser.error("--skip must be between 0 and --steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global clock
        clock = time.process_time

    resolved = resolve(args.spec, [*args.sets, f"train.steps={args.steps}", "train.grad_accum=1"])
    t = resolved.spec.train
    if t.grad_clip is None:
        parser.error("the spec has no grad_clip; the bare + clip loop needs one")
    with tempfile.TemporaryDirectory(prefix="cartspec-bench-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        _, splits = prepare_data(resolved.spec, cache)
        stream = BatchStream(splits.train, resolved.spec.seq_len, t.micro_batch)
        batches = [next(stream) for _ in range(args.steps)]
        _, module_path = compiled_module(resolved, work, "model.py")

        names = ["runtime", "bare", "bare + clip"]
        steps: dict[str, list[list[float]]] = {name: [] for name in names}
        for rep in range(args.repeats):
            for name in names[rep % 3 :] + names[: rep % 3]:  # rotate, so no loop always runs first
                if name == "runtime":
                    spent, logged = time_runtime(resolved, cache, work, args.skip)
                else:
                    spent, every = time_bare(resolved, module_path, batches, name == "bare + clip", args.skip)
                    if name == "bare + clip":
                        clipped = every
                steps[name].append(spent)
            if logged != [clipped[s - 1] for s in _logged_steps(t.log_interval, args.steps)]:
                raise SystemExit("the bare + clip loop's losses differ from the runtime's: not the same work")

    means = {k: [statistics.fmean(run) for run in v] for k, v in steps.items()}
    mean = {k: statistics.median(v) for k, v in means.items()}  # median over repetitions of the mean step
    typical = {k: statistics.median(x for run in v for x in run) for k, v in steps.items()}  # median step
    result = {
        "spec": resolved.spec.name,
        "steps": args.steps,
        "timed_steps": args.steps - args.skip,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "tokens_per_step": t.micro_batch * resolved.spec.seq_len,
        "seconds_per_step": mean,
        "median_step_seconds": typical,
        "run_means": means,
        "overhead_vs_bare": mean["runtime"] / mean["bare"] - 1,
        "overhead_vs_bare_clip": mean["runtime"] / mean["bare + clip"] - 1,
        "median_step_overhead_vs_bare_clip": typical["runtime"] / typical["bare + clip"] - 1,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _logged_steps(interval: int, steps: int) -> list[int]:
    return [s for s in range(1, steps + 1) if s % interval == 0 or s == steps]


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    mean, typical = result["seconds_per_step"], result["median_step_seconds"]
    table = Table(
        title=(
            f"{result['spec']}: runtime overhead, CPU float32, {result['threads']} thread(s), "
            f"{result['clock']} clock, {result['tokens_per_step']} tokens/step, "
            f"{result['repeats']} x {result['timed_steps']} steps"
        ),
        title_justify="left",
    )
    columns = ("loop", "s / step", "runtime / this", "median step", "runtime / this ", "each run (s / step)")
    for col in columns:
        table.add_column(col, justify="left" if col == "loop" else "right")
    for name in mean:
        runs = ", ".join(f"{v:.4f}" for v in result["run_means"][name])
        table.add_row(
            name,
            f"{mean[name]:.4f}",
            f"{mean['runtime'] / mean[name]:.3f}",
            f"{typical[name]:.4f}",
            f"{typical['runtime'] / typical[name]:.3f}",
            runs,
        )
    Console().print(table)
    print("s / step: median over repetitions of each run's mean step; median step: of all timed steps")
    over = result["overhead_vs_bare_clip"]
    verdict = "within" if over < TARGET else "OVER"
    print(
        f"overhead: {result['overhead_vs_bare']:+.1%} vs bare, {over:+.1%} vs bare + clip "
        f"({verdict} the {TARGET:.0%} target); median step {result['median_step_overhead_vs_bare_clip']:+.1%} "
        "vs bare + clip"
    )


if __name__ == "__main__":
    sys.exit(main())
