"""Run the real CLI against hostile inputs and print what each did: the exit code, the first line
on stderr, whether a traceback appeared and whether it hung (ran past its timeout).

Devices and FIFOs as specs, extends targets, corpora and tokenizer files; integers past Python's
digit limit; specs whose activations or parameters are past any machine; YAML bombs; a file a spec
has no business reading; two trainings in one run folder at once; a training killed with SIGKILL
and resumed; code appended to a run's model.py; a FIFO planted in a run folder; token ids beyond
the vocabulary; an empty results database. Every case must end
with its expected exit code, no traceback and no hang; the exit code is 1 otherwise.

    python bench/hostile_inputs.py                 # about a minute on 2 CPU cores
    python bench/hostile_inputs.py > bench/results/hostile_inputs.txt
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
SPEC = """\
name: hostile
model: {vocab_size: 40, d_model: 16, max_seq_len: 8, head_dim: 8}
blocks: {stack: {layers: 1, attention: {kind: mha}}}
"""
TINY_TRAIN = [  # the tiny byte-level CART of the tests: a step takes milliseconds
    "model.d_model=32",
    "model.head_dim=16",
    "model.vocab_size=300",
    "model.max_seq_len=32",
    "train.seq_len=32",
    "train.data.tokenizer=bytes",
    "train.micro_batch=4",
    "train.schedule.warmup=5",
    "train.eval.batches=8",
    "train.eval.interval=10",
    "train.checkpoint.interval=10",
    "train.log_interval=1",
]
TIMEOUT_S = 60


@dataclass
class Outcome:
    case: str
    expected: int
    rc: int | None  # None: killed at the timeout
    stderr: str
    note: str = ""  # what the case checked beyond the exit code ("" when all held)

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr

    @property
    def ok(self) -> bool:
        return self.rc == self.expected and not self.traceback and not self.note


class Bench:
    """A scratch folder, the environment every command runs in, and the outcomes so far."""

    def __init__(self, here: Path):
        self.here = here
        self.env = {
            **os.environ,
            "CARTSPEC_CACHE": str(here / "cache"),
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
        }
        self.outcomes: list[Outcome] = []
        corpus = here / "corpus.txt"
        rng = random.Random(0)
        words = ["and", "the", "lord", "said", "unto", "him", "in", "that", "day", "of", "light"]
        corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(50)) for _ in range(200)))
        self.train_sets = [*TINY_TRAIN, f"train.data.source={corpus}"]

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cartspec", *args],
            cwd=self.here,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(
        self, case: str, *args: str, expected: int = 2, check: Callable[[], str] | None = None
    ) -> Outcome:
        """One command to its end or its timeout; ``check`` returns what went wrong besides."""
        proc = self.start(*args)
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            rc = None
        outcome = Outcome(case, expected, rc, err, check() if check is not None else "")
        self.outcomes.append(outcome)
        return outcome

    def write(self, name: str, text: str) -> Path:
        path = self.here / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def train_args(self, out: Path, *extra: str) -> list[str]:
        sets = [arg for s in self.train_sets for arg in ("--set", s)]
        return ["train", str(CART_TINY), *sets, "--out", str(out), "--device", "cpu", *extra]


# ----------------------------------------------------------------------------- the cases


def files_that_are_not_files(b: Bench) -> None:
    os.mkfifo(b.here / "fifo.yaml")
    b.run("spec is a FIFO", "validate", "fifo.yaml")
    b.run("spec is /dev/zero", "validate", "/dev/zero")
    b.run("spec is /dev/urandom", "params", "/dev/urandom")
    b.write("ext_fifo.yaml", "extends: fifo.yaml\n" + SPEC)
    b.run("extends: a FIFO", "validate", "ext_fifo.yaml")
    b.write("ext_zero.yaml", "extends: /dev/zero\n" + SPEC)
    b.run("extends: /dev/zero", "validate", "ext_zero.yaml")
    b.write("ext_passwd.yaml", "extends: /etc/passwd\n" + SPEC)
    b.run("extends: /etc/passwd", "validate", "ext_passwd.yaml")
    b.write("secrets.conf", "api_token: hunter2\n")
    b.write("ext_secret.yaml", "extends: secrets.conf\n" + SPEC)
    b.run("extends: a key: value file", "validate", "ext_secret.yaml", check=lambda: _absent(b, "hunter2"))
    os.symlink("loop_b.yaml", b.here / "loop_a.yaml")
    os.symlink("loop_a.yaml", b.here / "loop_b.yaml")
    b.run("spec is a symlink loop", "validate", "loop_a.yaml")
    os.mkfifo(b.here / "corpus_fifo.txt")
    b.run(
        "corpus is a FIFO",
        *b.train_args(b.here / "r_fifo_corpus", "--set", f"train.data.source={b.here / 'corpus_fifo.txt'}"),
    )
    os.mkfifo(b.here / "tok_fifo.json")
    b.run(
        "tokenizer_path is a FIFO",
        *b.train_args(
            b.here / "r_fifo_tok",
            "--set", "train.data.tokenizer=file",
            "--set", f"train.data.tokenizer_path={b.here / 'tok_fifo.json'}",
        ),
    )  # fmt: skip
    b.run(
        "tokenizer_path is /dev/zero",
        *b.train_args(
            b.here / "r_zero_tok",
            "--set",
            "train.data.tokenizer=file",
            "--set",
            "train.data.tokenizer_path=/dev/zero",
        ),
    )


def _absent(b: Bench, text: str) -> str:
    """ "" when the last command's stderr does not hold ``text``."""
    return f"stderr quotes {text!r}" if text in b.outcomes[-1].stderr else ""


def numbers_and_sizes(b: Bench) -> None:
    huge = "9" * 5000
    b.write("huge_int.yaml", SPEC.replace("vocab_size: 40", f"vocab_size: {huge}"))
    b.run("integer of 5,000 digits in a spec", "validate", "huge_int.yaml")
    b.write("spec.yaml", SPEC)
    b.run("integer of 5,000 digits in --set", "params", "spec.yaml", "--set", f"model.d_model={huge}")
    b.run("key of 5,000 digits", "validate", str(b.write("huge_key.yaml", SPEC + f"{huge[:1000]}: 1\n")))
    logits = ["model.vocab_size=2000000", "model.max_seq_len=4096", "train.micro_batch=16"]
    b.run("logits of 488 GiB", "validate", "spec.yaml", *[a for s in logits for a in ("--set", s)])
    scores = ["model.max_seq_len=262144", "train.micro_batch=64"]
    b.run("attention scores of 2 PiB", "validate", "spec.yaml", *[a for s in scores for a in ("--set", s)])
    params = ["model.d_model=65536", "model.head_dim=64", "model.vocab_size=2097152"]
    b.run("parameters past 5e10", "params", "spec.yaml", *[a for s in params for a in ("--set", s)])
    bomb = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    b.write("alias_bomb.yaml", SPEC + "\n".join(bomb) + "\n")
    b.run("YAML alias bomb", "validate", "alias_bomb.yaml")
    b.write("deep.yaml", "name: x\nmodel: " + "[" * 200_000 + "]" * 200_000 + "\n")
    b.run("YAML nested 200,000 deep", "validate", "deep.yaml")
    b.run("loops: yes", "validate", "spec.yaml", "--set", "blocks.stack.layers=yes")
    b.run("lr: .nan", "validate", "spec.yaml", "--set", "train.optimizer.lr=.nan")
    b.run("name: torch", "compile", "spec.yaml", "--set", "name=torch", "-o", "gen")


def runs(b: Bench) -> None:
    run = b.here / "run"
    first = b.run("train 20 steps", *b.train_args(run, "--steps", "20"), expected=0)
    if first.rc != 0:
        return
    b.run("eval --loops 1000000000", "eval", str(run), "--loops", "1000000000", "--device", "cpu")
    b.run(
        "--until 5 below the resumed step 20",
        *b.train_args(run, "--steps", "20", "--resume", "auto", "--until", "5"),
    )
    b.run("--resume ''", *b.train_args(run, "--steps", "20", "--resume", ""))
    b.run(
        "--resume step 10 with step 20 in the folder",
        *b.train_args(run, "--steps", "20", "--resume", str(run / "checkpoints/step_0000010")),
    )
    marker = b.here / "APPENDED_CODE_RAN"
    model = run / "model.py"
    original = model.read_text()
    model.write_text(original + f"\nopen({str(marker)!r}, 'w').close()\n")
    b.run(
        "code appended to model.py (eval)",
        "eval",
        str(run),
        "--device",
        "cpu",
        check=lambda: _no_file(marker),
    )
    b.run(
        "code appended to model.py (sample)",
        "sample",
        str(run),
        "--device",
        "cpu",
        check=lambda: _no_file(marker),
    )
    model.write_text(original)
    b.run("sample --seed 2**64", "sample", str(run), "--seed", str(2**64), "--device", "cpu")
    (b.here / "ids.bin").write_bytes(bytes([1, 0, 2, 0, 0x88, 0x13] * 100))  # uint16 ids, one of them 5000
    b.run(
        "eval --data with ids beyond the vocab",
        "eval",
        str(run),
        "--data",
        str(b.here / "ids.bin"),
        "--device",
        "cpu",
    )
    state = run / "checkpoints/step_0000020/state.json"
    saved = state.read_bytes()
    state.unlink()
    os.mkfifo(state)
    b.run("state.json is a FIFO (eval falls back)", "eval", str(run), "--device", "cpu", expected=0)
    state.unlink()
    state.write_bytes(saved)
    (b.here / "sweep").mkdir()
    (b.here / "sweep" / "results.db").write_bytes(b"")
    b.run(
        "report on a 0-byte results.db",
        "report",
        "sweep",
        check=lambda: _size(b.here / "sweep" / "results.db", 0),
    )


def _no_file(path: Path) -> str:
    return f"{path.name} exists: the code ran" if path.exists() else ""


def _size(path: Path, size: int) -> str:
    return "" if path.stat().st_size == size else f"{path.name} was rewritten"


def concurrent_runs(b: Bench) -> None:
    """Two trainings in one folder: the second is refused while the first holds it, the first
    finishes with one metrics line per step; then a run killed with SIGKILL leaves no stale lock."""
    run = b.here / "shared_run"
    first = b.start(*b.train_args(run, "--steps", "300"))
    lock = run / ".lock"
    deadline = time.monotonic() + TIMEOUT_S
    while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    b.run("second train in a folder being trained", *b.train_args(run, "--steps", "300", "--resume", "auto"))
    try:
        _, err = first.communicate(timeout=TIMEOUT_S * 3)
        rc: int | None = first.returncode
    except subprocess.TimeoutExpired:
        first.kill()
        _, err = first.communicate()
        rc = None
    steps = [line.split(",")[0] for line in (run / "metrics.jsonl").read_text().splitlines()]
    note = "" if len(steps) == 300 and len(set(steps)) == 300 else f"metrics.jsonl has {len(steps)} lines"
    b.outcomes.append(Outcome("the first train, meanwhile (300 steps)", 0, rc, err, note))

    killed = b.here / "killed_run"
    victim = b.start(*b.train_args(killed, "--steps", "300"))
    deadline = time.monotonic() + TIMEOUT_S
    while not list((killed / "checkpoints").glob("step_*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    until = str(max(int(p.name.split("_")[1]) for p in (killed / "checkpoints").glob("step_*")) + 10)
    b.run(
        "resume auto after SIGKILL (stale lock)",
        *b.train_args(killed, "--steps", "300", "--resume", "auto", "--until", until),
        expected=0,
    )


# ----------------------------------------------------------------------------- the table


def table(outcomes: list[Outcome]) -> str:
    """One row per case: case, expected and actual exit code, traceback, hang, first stderr line."""
    width = max(len(o.case) for o in outcomes)
    rows = [f"{'case':<{width}}  exp  rc    traceback  hang  first stderr line", "-" * (width + 100)]
    for o in outcomes:
        first = next((line for line in o.stderr.splitlines() if line.strip()), "")
        first = first if len(first) <= 150 else first[:147] + "..."
        rc = "hang" if o.rc is None else str(o.rc)
        mark = "" if o.ok else "   <-- " + (o.note or "unexpected")
        rows.append(
            f"{o.case:<{width}}  {o.expected:<3}  {rc:<4}  {'yes' if o.traceback else 'no':<9}  "
            f"{'yes' if o.rc is None else 'no':<4}  {first}{mark}"
        )
    bad = [o for o in outcomes if not o.ok]
    rows.append("")
    rows.append(
        f"{len(outcomes)} cases: {sum(o.traceback for o in outcomes)} tracebacks, "
        f"{sum(o.rc is None for o in outcomes)} hangs, {len(bad)} not as expected"
    )
    return "\n".join(rows)


def main() -> int:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cartspec-hostile-") as tmp:
        b = Bench(Path(tmp))
        for group in (files_that_are_not_files, numbers_and_sizes, runs, concurrent_runs):
            group(b)
        print(table(b.outcomes).replace(tmp, "$RUN"))
    print(f"{time.perf_counter() - t0:.0f} s")
    return 0 if all(o.ok for o in b.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
