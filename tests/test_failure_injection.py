"""Deterministic failure injection: every write of a checkpoint and of the run's files fails in turn
(OSError, as a full disk or a lost mount raises it), and what a reader sees afterwards is the state
before the write, whole: no incomplete ``step_*`` folder, no half ``spec.yaml`` or ``metrics.jsonl``,
and the previous checkpoint still resumes.

The SIGKILL test in test_checkpoint.py samples moments at random; this one visits each write.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cartspec.resolve import resolve
from cartspec.runtime import atomic, checkpoint, rundir

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"


class Injected(OSError):
    """The failure this module injects (an OSError, so code that handles disk errors handles it)."""

    def __init__(self, what: str):
        super().__init__(errno.ENOSPC, f"injected failure of {what}")


class FailNth:
    """Wraps writer functions; the ``n``-th call among all of them (1-based) raises ``Injected``
    before it writes anything; ``n = 0`` never fails. ``calls`` lists what was called, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int):
        self.monkeypatch, self.n, self.calls = monkeypatch, n, []

    def wrap(self, owner, name: str, what=None) -> None:
        original = getattr(owner, name)

        def writer(*args, **kwargs):
            label = what(*args) if what is not None else name
            if label is None:  # not a write this test watches
                return original(*args, **kwargs)
            self.calls.append(label)
            if len(self.calls) == self.n:
                raise Injected(label)
            return original(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, writer)


# ----------------------------------------------------------------------------- checkpoints


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


CHECKPOINT_WRITES = ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "rename"]


def fail_checkpoint_write(monkeypatch: pytest.MonkeyPatch, n: int) -> FailNth:
    """Every write ``checkpoint.save`` makes: each safetensors file, state.json, the rename into place."""
    fail = FailNth(monkeypatch, n)
    fail.wrap(checkpoint, "save_model", lambda model, filename, *_: Path(filename).name)
    fail.wrap(checkpoint, "save_file", lambda tensors, filename, *_: Path(filename).name)
    fail.wrap(Path, "write_text", lambda path, *_: path.name if path.name == "state.json" else None)
    fail.wrap(
        checkpoint.os,
        "replace",
        lambda src, dst, *_: "rename" if Path(dst).name.startswith("step_") else None,
    )
    return fail


def assert_every_visible_checkpoint_is_complete(run: Path) -> list[str]:
    for path in checkpoint.list_checkpoints(run):
        checkpoint.read_state(path)
        for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
            load_file(str(path / name))
    return [p.name for p in checkpoint.list_checkpoints(run)]


def test_a_save_makes_exactly_the_writes_this_module_fails_in_turn(tmp_path, monkeypatch):
    model, optimizer = model_and_optimizer(0)
    fail = fail_checkpoint_write(monkeypatch, 0)
    checkpoint.save(tmp_path, 1, model, optimizer, {}, keep=2)
    assert fail.calls == CHECKPOINT_WRITES


@pytest.mark.parametrize("n", range(1, len(CHECKPOINT_WRITES) + 1), ids=CHECKPOINT_WRITES)
@pytest.mark.parametrize("keep", [1, 2])
def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_whole_and_resumable(
    tmp_path, monkeypatch, n, keep
):
    model, optimizer = model_and_optimizer(0)
    torch.manual_seed(3)
    first = checkpoint.save(tmp_path, 10, model, optimizer, {"data": {"position": 10}}, keep=keep)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    draw = torch.rand(2)  # what the run draws next after step 10

    model(torch.randn(3, 4)).sum().backward()  # the run moves on, then fails to save step 20
    optimizer.step()
    fail = fail_checkpoint_write(monkeypatch, n)
    with pytest.raises(Injected, match=CHECKPOINT_WRITES[n - 1]):
        checkpoint.save(tmp_path, 20, model, optimizer, {"data": {"position": 20}}, keep=keep)
    monkeypatch.undo()
    assert fail.calls == CHECKPOINT_WRITES[:n]

    assert assert_every_visible_checkpoint_is_complete(tmp_path) == ["step_0000010"]
    assert checkpoint.newest_valid(tmp_path) == first
    fresh, fresh_optimizer = model_and_optimizer(1)
    loaded = checkpoint.restore(first, fresh, fresh_optimizer)
    assert loaded.step == 10 and loaded.state["data"] == {"position": 10}
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
    assert torch.equal(torch.rand(2), draw)  # the RNG is the one saved at step 10

    # the next save succeeds and leaves no temporary folder behind
    checkpoint.save(tmp_path, 20, model, optimizer, {}, keep=keep)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == (["step_0000010", "step_0000020"] if keep == 2 else ["step_0000020"])


@pytest.mark.parametrize("n", range(1, len(CHECKPOINT_WRITES) + 1), ids=CHECKPOINT_WRITES)
def test_a_failed_save_of_a_step_that_exists_keeps_the_old_folder_of_that_step(tmp_path, monkeypatch, n):
    """Resuming from an older checkpoint trains through saved steps again; a failed save of one of
    them leaves the folder already there, whole (the old one is set aside only until the new one
    is in place)."""
    model, optimizer = model_and_optimizer(0)
    path = checkpoint.save(tmp_path, 10, model, optimizer, {"loss": 1.0}, keep=2)
    fail_checkpoint_write(monkeypatch, n)
    with pytest.raises(Injected):
        checkpoint.save(tmp_path, 10, model, optimizer, {"loss": 2.0}, keep=2)
    monkeypatch.undo()
    assert assert_every_visible_checkpoint_is_complete(tmp_path) == ["step_0000010"]
    assert checkpoint.read_state(path)["loss"] == 1.0


def test_a_training_run_whose_checkpoint_write_fails_resumes_from_the_previous_one(tmp_path, monkeypatch):
    """The loop's second checkpoint (step 4) fails at its state.json: the run stops with the
    error, step 2 is the newest checkpoint, and --resume auto trains on from it to the end."""
    from gen_helpers import BYTES_CART_SETS

    from cartspec.runtime.loop import Options, train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Word{i % 37} and more text, line {i}." for i in range(400)))
    sets = [
        *BYTES_CART_SETS,
        f"train.data.source={corpus}",
        "train.steps=6",
        "train.micro_batch=2",
        "train.schedule.warmup=1",
        "train.eval.interval=100",
        "train.eval.batches=2",
        "train.checkpoint.interval=2",
        "train.checkpoint.keep=3",
        "train.log_interval=1",
    ]
    out = tmp_path / "run"
    options = {"out": out, "device": "cpu", "cache_dir": tmp_path / "cache", "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fail = fail_checkpoint_write(monkeypatch, len(CHECKPOINT_WRITES) + 4)  # the 2nd save's state.json
        with pytest.raises(Injected, match="state.json"):
            train(resolve(CART_TINY, sets), Options(**options))
        monkeypatch.undo()
        assert fail.calls[-1] == "state.json"
        assert assert_every_visible_checkpoint_is_complete(out) == ["step_0000002"]

        train(resolve(CART_TINY, sets), Options(**options, resume="auto"))
    finally:
        torch.set_num_threads(threads)
    assert assert_every_visible_checkpoint_is_complete(out) == [
        "step_0000002",
        "step_0000004",
        "step_0000006",
    ]
    steps = [r["step"] for r in rundir.read_metrics(out) if "loss" in r]
    assert steps == list(range(1, 7))  # steps 3 and 4 trained again, logged once


# ----------------------------------------------------------------------------- spec.yaml, metrics.jsonl


class TornFile:
    """A file whose write stores half its data and then fails, as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise Injected("write")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


ATOMIC_STEPS = ["write", "fsync", "rename"]


def fail_atomic_write(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """One step of ``atomic.write_atomic`` fails: the data write (half written), the fsync or the rename."""
    if step == "write":
        torn = lambda *a, **k: TornFile(open(*a, **k))  # noqa: E731, SIM115 - closed by the with block
        monkeypatch.setattr(atomic, "open", torn, raising=False)
    elif step == "fsync":

        def fsync(fd):
            raise Injected("fsync")

        monkeypatch.setattr(atomic.os, "fsync", fsync)
    else:

        def replace(src, dst):
            raise Injected("rename")

        monkeypatch.setattr(atomic.os, "replace", replace)


@pytest.mark.parametrize("step", ATOMIC_STEPS)
def test_a_failed_spec_yaml_write_leaves_the_previous_spec_whole(tmp_path, monkeypatch, step):
    before = resolve(CART_TINY, ["blocks.core.loops=6"])
    rundir.write_spec(tmp_path, before)
    fail_atomic_write(monkeypatch, step)
    with pytest.raises(Injected):
        rundir.write_spec(tmp_path, resolve(CART_TINY, ["blocks.core.loops=2"]))
    monkeypatch.undo()
    assert rundir.read_spec(tmp_path).spec == before.spec
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.SPEC]


@pytest.mark.parametrize("step", ATOMIC_STEPS)
def test_a_failed_metrics_rewrite_on_resume_leaves_the_metrics_whole(tmp_path, monkeypatch, step):
    metrics = rundir.Metrics(tmp_path, resume_step=None)
    for s in (1, 2, 3, 4):
        metrics.write({"step": s, "loss": 1.0 / s})
    metrics.close()
    before = (tmp_path / rundir.METRICS).read_text()
    fail_atomic_write(monkeypatch, step)
    with pytest.raises(Injected):
        rundir.Metrics(tmp_path, resume_step=2)
    monkeypatch.undo()
    assert (tmp_path / rundir.METRICS).read_text() == before
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.METRICS]


@pytest.mark.parametrize("step", ATOMIC_STEPS)
def test_a_failed_env_json_write_leaves_the_previous_one_whole(tmp_path, monkeypatch, step):
    rundir.write_env(tmp_path, CART_TINY, {"torch": "1", "device": "cpu"})
    before = rundir.read_env(tmp_path)
    fail_atomic_write(monkeypatch, step)
    with pytest.raises(Injected):
        rundir.write_env(tmp_path, CART_TINY, {"torch": "2", "device": "cuda"})
    monkeypatch.undo()
    assert json.loads((tmp_path / rundir.ENV).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.ENV]
