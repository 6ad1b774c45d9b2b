"""CLI latency: validate / params / graph / compile as whole processes, next to bare Python and ``import torch``.

The goal: ``cartspec params specs/cart_d1024.yaml`` answers in under 0.5 s as a whole process.
This is a benchmark, not a test: timings depend on the machine and its load.

    python bench/cli_latency.py            # 10 runs of each
    python bench/cli_latency.py -n 20 --check   # exit 1 if params' median is over budget
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/cart_d1024.yaml"
BUDGET_S = 0.5


def cartspec_command() -> list[str]:
    """The installed ``cartspec`` script beside this interpreter (what users run), else ``-m``."""
    script = Path(sys.executable).with_name("cartspec")
    if script.exists():
        return [str(script)]
    found = shutil.which("cartspec")
    return [found] if found else [sys.executable, "-m", "cartspec"]


def time_runs(argv: list[str], n: int) -> list[float]:
    """Wall time of ``n`` whole-process runs (after one untimed warm-up for the file cache)."""
    env = {**os.environ, "COLUMNS": "120"}
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr.decode()}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="timed runs per command (default 10)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if params' median exceeds {BUDGET_S} s")
    parser.add_argument("--no-torch", action="store_true", help="skip the `import torch` reference row")
    args = parser.parse_args()

    cartspec = cartspec_command()
    out = tempfile.mkdtemp(prefix="cartspec-latency-")  # compile writes here, not into generated/
    rows: list[tuple[str, list[str]]] = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        (f"cartspec validate {SPEC}", [*cartspec, "validate", SPEC]),
        (f"cartspec params {SPEC}", [*cartspec, "params", SPEC]),
        (f"cartspec params --json {SPEC}", [*cartspec, "params", "--json", SPEC]),
        (f"cartspec graph {SPEC}", [*cartspec, "graph", SPEC]),
        (f"cartspec graph --format json {SPEC}", [*cartspec, "graph", "--format", "json", SPEC]),
        (f"cartspec compile --out TMP {SPEC}", [*cartspec, "compile", "--out", out, SPEC]),
        (f"cartspec compile --check {SPEC}", [*cartspec, "compile", "--check", SPEC]),
    ]
    if not args.no_torch:
        rows.append(('python -c "import torch"', [sys.executable, "-c", "import torch"]))

    print(f"{args.n} runs each, whole processes, cwd {ROOT.name}/ ({os.cpu_count()} CPUs)")
    print(f"cartspec = {' '.join(cartspec)}\n")
    width = max(len(label) for label, _ in rows)
    print(f"{'command':<{width}}  {'median':>8}  {'min':>8}")
    medians = {}
    for label, argv in rows:
        times = time_runs(argv, args.n)
        medians[label] = statistics.median(times)
        print(f"{label:<{width}}  {medians[label]:>7.3f}s  {min(times):>7.3f}s", flush=True)
    shutil.rmtree(out, ignore_errors=True)

    params = medians[f"cartspec params {SPEC}"]
    verdict = "within" if params < BUDGET_S else "OVER"
    print(f"\nparams median {params:.3f} s: {verdict} the {BUDGET_S} s budget")
    return 1 if args.check and params >= BUDGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
