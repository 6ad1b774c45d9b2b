"""Fuzz the compiler front to back with mutated specs: load, validate, graph, params, render.

Each input is a valid random spec (tests/strategies.py) with one to three random edits or one
certainly-invalid mutation, written to a file (with its extends chain and --set overrides, where
it has them). Every input must end one of two ways: accepted (it accounts and renders to valid
Python) or cleanly rejected (SpecError/UserError, every line one located problem). Anything else is
a crash, a bug: the first few are printed with their tracebacks and inputs, and the exit code is 1.
No torch is imported.

    python bench/fuzz_specs.py              # 10,000 inputs
    python bench/fuzz_specs.py --n 500 --seed 7
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import random
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from strategies import RandomChooser, random_case, write_files  # noqa: E402

from cartspec.accounting import account  # noqa: E402
from cartspec.codegen.render import render  # noqa: E402
from cartspec.errors import SpecError, UserError  # noqa: E402
from cartspec.resolve import resolve  # noqa: E402

LOCATED = re.compile(r"^(--set .*|[^:\n]+(:\d+:\d+)?): \S")


def run(n: int, seed: int, show: int) -> int:
    rng = random.Random(seed)
    chooser = RandomChooser(rng)
    tally: collections.Counter[str] = collections.Counter()
    labels: collections.Counter[str] = collections.Counter()
    crashes: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for i in range(n):
            case = random_case(chooser)
            labels[case.label] += 1
            folder = Path(tmp) / f"case{i % 2}"  # two folders in turn: files of the last case go
            folder.mkdir(exist_ok=True)
            for old in folder.iterdir():
                old.unlink()
            write_files(folder, case)
            try:
                resolved = resolve(folder / case.main, case.sets)
                report = account(resolved.graph)
                assert report.effective >= report.stored > 0, "effective < stored"
                ast.parse(render(resolved))
                tally["accepted"] += 1
            except (SpecError, UserError) as e:
                lines = str(e).splitlines()
                bad = [line for line in lines if not LOCATED.match(line) or not line.isprintable()]
                if bad or not lines:
                    tally["crashed"] += 1
                    crashes.append(f"{case.label}: unlocated error line {bad[:1] or lines!r}\n{case}")
                else:
                    tally["rejected"] += 1
            except Exception:
                tally["crashed"] += 1
                crashes.append(f"{case.label}: {traceback.format_exc()}\n{case}")
    wall = time.perf_counter() - start
    print(f"{n:,} mutated specs (seed {seed}) in {wall:.1f} s: {n / wall:,.0f} specs/s")
    for outcome in ("accepted", "rejected", "crashed"):
        print(f"  {outcome:<9} {tally[outcome]:>7,}  ({100 * tally[outcome] / n:.1f}%)")
    print("  mutations: " + ", ".join(f"{k} {v}" for k, v in labels.most_common(8)) + ", ...")
    for text in crashes[:show]:
        print("\n--- crash ---\n" + text)
    return 1 if crashes else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="how many mutated specs (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--show", type=int, default=3, help="tracebacks to print (default 3)")
    args = parser.parse_args()
    sys.exit(run(args.n, args.seed, args.show))


if __name__ == "__main__":
    main()
