"""Data parallelism through torchrun on the CPU (gloo): two processes train what one process trains.

Each case trains the same global batch three ways: one process for 10 steps; two processes for 5
steps, then two processes resuming from that checkpoint to step 10; and one process resuming from
the two processes' step-5 checkpoint. Losses, validation losses and final weights must agree to
1e-5 (the ranks sum the same gradients in another order, so equality is not bitwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gen_helpers import BYTES_CART_SETS

from cartspec.resolve import resolve
from cartspec.runtime import checkpoint
from cartspec.runtime.distributed import split_batch
from cartspec.runtime.generated import import_module
from cartspec.runtime.loop import Options, train

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"

# The bytes CART; 4 micro-batches of 2 sequences per step.
TINY = [
    *BYTES_CART_SETS,
    "train.micro_batch=2",
    "train.grad_accum=4",
    "train.steps=10",
    "train.schedule.warmup=3",
    "train.eval.batches=6",
    "train.eval.interval=5",
    "train.checkpoint.interval=5",
    "train.log_interval=1",
]
SHARED_ENDS = "share=[{name: ends, members: [prelude.1, coda.0]}]"  # one tensor under two names

CASES = {
    "ddp": [],
    # sharded, with a sharing group (one FSDP unit reachable by two names) and a split micro-batch
    "fsdp": ["train.parallel=fsdp", SHARED_ENDS, "train.micro_batch=4", "train.grad_accum=1"],
    # per-sequence depths keyed by window position: each rank draws its own sequences' depths
    "ddp_sampled_depth": [
        "train.depth.kind=poisson_lognormal",
        "train.depth.mean=4",
        "train.depth.backprop=2",
        "train.depth.per=sequence",
    ],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def one_process(run: Path, sets: list[str], cache: Path, resume: str | None = None) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = Options(out=run, resume=resume, device="cpu", cache_dir=cache, progress="off")
        train(resolve(CART_TINY, [*TINY, *sets]), options)
    finally:
        torch.set_num_threads(before)


def two_processes(run: Path, sets: list[str], cache: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cartspec", "train", str(CART_TINY), "--nproc", "2"]
    command += ["--device", "cpu", "--out", str(run), *extra]
    command += [f"--set={s}" for s in [*TINY, *sets]]
    env = {**os.environ, "CARTSPEC_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def losses(run: Path) -> dict[int, tuple[float, float | None]]:
    """step -> (train loss, validation loss); fails on a step logged twice (only rank 0 logs)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"steps logged out of order or twice: {steps}"
    return {r["step"]: (r["loss"], r.get("val_loss")) for r in rows}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The step-10 weights loaded into the run's model (shared tensors under all their names)."""
    model = import_module(run / "model.py").Model()
    checkpoint.load_weights(checkpoint.checkpoint_dir(run) / "step_0000010", model)
    return model.state_dict()


def assert_same_training(run: Path, reference: Path) -> None:
    got, want = losses(run), losses(reference)
    assert list(got) == list(range(1, 11))
    for step, (loss, val) in want.items():
        assert got[step][0] == pytest.approx(loss, abs=1e-5), f"train loss at step {step}"
        if val is not None:
            assert got[step][1] == pytest.approx(val, abs=1e-5), f"validation loss at step {step}"
    a, b = final_weights(run), final_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("parallel", list(CASES))
def test_two_processes_train_what_one_does_and_resume_from_their_checkpoint(
    parallel: str, tmp_path: Path, cache: Path
) -> None:
    sets = CASES[parallel]
    one_process(tmp_path / "one", sets, cache)

    two = tmp_path / "two"
    first = two_processes(two, sets, cache, "--until", "5")
    assert first.returncode == 0, first.stderr
    shutil.copytree(two, tmp_path / "two_then_one")  # its step-5 checkpoint, before the resume
    resumed = two_processes(two, sets, cache, "--resume", "auto", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 10  # one summary: rank 0's
    assert [p.name for p in checkpoint.list_checkpoints(two)] == ["step_0000005", "step_0000010"]
    assert_same_training(two, tmp_path / "one")

    # the checkpoint format does not depend on the world size or the strategy
    one_process(tmp_path / "two_then_one", sets, cache, resume="auto")
    assert_same_training(tmp_path / "two_then_one", tmp_path / "one")


def test_a_user_error_in_the_workers_is_one_line_and_exit_code_2(tmp_path: Path, cache: Path) -> None:
    result = two_processes(tmp_path / "run", [], cache, "--resume", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume {tmp_path / 'nowhere'}: no such checkpoint"
    ]


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_launching(cli) -> None:
    rc, _, err = cli("train", str(CART_TINY), "--nproc", "3", "--set", "train.micro_batch=4")
    assert rc == 2
    assert err.strip().splitlines() == [
        "error: the global batch (micro_batch 4 x grad_accum 1) does not split over 3 processes: "
        "make grad_accum or micro_batch a multiple of 3"
    ]


@pytest.mark.parametrize(
    "micro_batch, grad_accum, world, expected",
    [(8, 4, 2, (8, 2)), (8, 4, 4, (8, 1)), (16, 1, 2, (8, 1)), (6, 3, 3, (6, 1)), (4, 6, 4, (1, 6))],
)
def test_the_global_batch_is_kept_at_any_world_size(micro_batch, grad_accum, world, expected) -> None:
    local = split_batch(micro_batch, grad_accum, world)
    assert local == expected
    assert local[0] * local[1] * world == micro_batch * grad_accum


def test_stopping_the_launcher_stops_the_workers_quietly(tmp_path: Path, cache: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cartspec", "train", str(CART_TINY), "--nproc", "2", "--device", "cpu"]
    command += ["--out", str(run), *[f"--set={s}" for s in TINY], "--steps", "100000"]
    env = {**os.environ, "CARTSPEC_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.1)  # until the workers are training
        workers = _children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    time.sleep(1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived the launcher"


def _children(pid: int) -> list[int]:
    """The worker processes torchrun started under ``pid`` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue  # exited meanwhile
        if fields.get("PPid", "").strip() == str(pid) and "python" in fields.get("Name", ""):
            found.append(int(status.parent.name))
    return found


def test_a_sweep_with_nproc_trains_each_config_in_two_processes_and_records_it(
    tmp_path: Path, cache: Path
) -> None:
    """`cartspec sweep --nproc 2`: the config trains through torchrun, its row is done with the
    run's own final values, and its losses are those one process trains."""
    sweep = tmp_path / "two.yaml"
    sets = "\n".join(f"  - {json.dumps(s)}" for s in TINY)
    sweep.write_text(f"name: two\nbase: {CART_TINY}\nset:\n{sets}\n")
    command = [sys.executable, "-m", "cartspec", "sweep", str(sweep), "--nproc", "2", "--device", "cpu"]
    env = {**os.environ, "CARTSPEC_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"1 done, 0 failed; results in {tmp_path / 'out' / 'results.db'}"
    run = tmp_path / "out" / "runs" / "base"
    one_process(tmp_path / "one", [], cache)
    assert_same_training(run, tmp_path / "one")
    with sqlite3.connect(tmp_path / "out" / "results.db") as con:
        status, val_loss, speed = con.execute("SELECT status, val_loss, tokens_per_s FROM runs").fetchone()
    assert status == "done" and speed > 0
    assert val_loss == losses(run)[10][1]
    assert json.loads((run / "env.json").read_text())["processes"] == 2
