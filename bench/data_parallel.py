"""Data parallelism: training tokens/s of one process next to N processes with DDP and with FSDP.

Every row trains the same spec with the same global batch through the real CLI (``cartspec train
--nproc N --json``) and reads the run's own throughput from ``metrics.jsonl``, after the first
``--skip`` logged steps (start-up, first allocations). The one-process row gets all the cores as
threads; each of the N processes gets cores/N threads, so the rows compare ways of spending the
same machine, not more hardware. The last column checks that the runs trained the same thing:
the final losses agree to float noise.

    python bench/data_parallel.py                          # cart_tiny, 30 steps, 2 processes
    python bench/data_parallel.py --nproc 4 --steps 50 --set train.micro_batch=32

A benchmark, not a test: on a CPU, gloo's all-reduce and the split of the cores dominate; on GPUs
(nccl, one process per GPU) N processes are N devices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train(spec: str, sets: list[str], nproc: int, parallel: str, steps: int, skip: int, threads: int) -> dict:
    """One ``cartspec train`` run; its median logged tokens/s past ``skip`` steps and last loss."""
    out = Path(tempfile.mkdtemp(prefix="cartspec-dp-")) / "run"
    command = [
        sys.executable,
        "-m",
        "cartspec",
        "train",
        spec,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--json",
    ]
    command += ["--nproc", str(nproc), "--steps", str(steps), "--set", f"train.parallel={parallel}"]
    command += ["--set", "train.log_interval=1", "--set", f"train.eval.interval={steps}"]
    command += [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > skip]
    return {"tokens_per_s": statistics.median(rates), "loss": rows[-1]["loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="specs/tiny/cart_tiny.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="logged steps left out of the median")
    p.add_argument("--set", dest="sets", action="append", default=[], help="spec override, repeatable")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    per_rank = max(1, cores // args.nproc)

    runs = [
        ("1 process", 1, "ddp", cores),
        (f"{args.nproc} processes, ddp", args.nproc, "ddp", per_rank),
        (f"{args.nproc} processes, fsdp", args.nproc, "fsdp", per_rank),
    ]
    print(f"{args.spec}, {args.steps} steps, {cores} CPU cores, gloo\n")
    print(f"{'run':<22} {'threads/proc':>12} {'tokens/s':>10} {'vs 1 process':>13} {'last loss':>10}")
    base = None
    for label, nproc, parallel, threads in runs:
        r = train(args.spec, args.sets, nproc, parallel, args.steps, args.skip, threads)
        base = base or r
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        print(
            f"{label:<22} {threads:>12} {r['tokens_per_s']:>10,.0f} {ratio:>12.2f}x {r['loss']:>10.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
