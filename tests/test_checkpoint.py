"""Checkpoints: atomic on disk, bit-exact on resume, and safe against a kill at any moment."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gen_helpers import BYTES_CART_SETS
from safetensors.torch import load_file

from cartspec.errors import UserError
from cartspec.resolve import resolve
from cartspec.runtime import checkpoint
from cartspec.runtime.loop import Options, train

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"

# The bytes CART with a short recipe: checkpoints at steps 10 and 20.
TINY = [
    *BYTES_CART_SETS,
    "train.micro_batch=4",
    "train.schedule.warmup=5",
    "train.eval.batches=8",
    "train.eval.interval=10",
    "train.checkpoint.interval=10",
    "train.checkpoint.keep=2",
    "train.log_interval=1",
]

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "that",
    "he",
    "shall",
    "unto",
    "for",
    "his",
    "a",
    "lord",
    "they",
    "be",
    "is",
    "him",
    "not",
    "them",
    "it",
    "with",
    "all",
    "thou",
    "thy",
    "was",
    "which",
    "my",
    "me",
    "said",
    "but",
    "ye",
    "their",
    "have",
    "will",
    "thee",
    "from",
    "as",
    "are",
    "when",
    "this",
    "out",
    "were",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred paragraphs of seeded word salad (about 100 kB): a corpus that needs no package."""
    rng = random.Random(0)
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))).capitalize() + "." for _ in range(300)
    ]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: a model this small gains nothing from two, and on a busy shared machine
    two spinning threads can make a step ten times slower. The killed subprocesses use one too, so
    their losses match the in-process reference bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny_sets(corpus: Path, steps: int, *extra: str) -> list[str]:
    return [*TINY, f"train.data.source={corpus}", f"train.steps={steps}", *extra]


def losses(run: Path) -> list[tuple[int, float]]:
    """(step, train loss) of every metrics line that has one."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def val_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), f"{a.name}: {name} differs"


def assert_complete(path: Path) -> None:
    """Every file of the checkpoint reads back whole."""
    checkpoint.read_state(path)
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        load_file(str(path / name))


def train_in_process(sets: list[str], out: Path, cache: Path, **options) -> None:
    train(
        resolve(CART_TINY, sets),
        Options(out=out, device="cpu", cache_dir=cache, progress="off", **options),
    )


# ----------------------------------------------------------------------------- resume is exact


def test_until_then_resume_auto_equals_one_run(cli, corpus, cache, tmp_path, monkeypatch):
    """20 steps in one run == 10 steps (--until 10) + --resume auto to 20: same losses, same weights."""
    monkeypatch.setenv("CARTSPEC_CACHE", str(cache))
    sets = [f"--set={s}" for s in tiny_sets(corpus, 20)]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli("train", str(CART_TINY), *sets, "--out", str(whole), "--device", "cpu")[0] == 0
    rc, _, err = cli("train", str(CART_TINY), *sets, "--out", str(split), "--device", "cpu", "--until", "10")
    assert rc == 0, err
    assert [p.name for p in checkpoint.list_checkpoints(split)] == ["step_0000010"]
    rc, _, err = cli(
        "train", str(CART_TINY), *sets, "--out", str(split), "--device", "cpu", "--resume", "auto"
    )
    assert rc == 0, err

    assert [s for s, _ in losses(whole)] == list(range(1, 21))
    assert losses(split) == losses(whole)  # exact float equality, step by step
    assert [s for s, _ in val_losses(whole)] == [10, 20]
    assert val_losses(split) == val_losses(whole)
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert_same_tensors(
            split / "checkpoints/step_0000020" / name, whole / "checkpoints/step_0000020" / name
        )


def test_resume_between_checkpoints_with_accumulation_is_exact(corpus, cache, tmp_path):
    """--until 13 writes a checkpoint at 13 (off the interval); resuming from it with grad_accum 2
    reproduces the uninterrupted run's losses and weights."""
    sets = tiny_sets(corpus, 20, "train.grad_accum=2")
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_in_process(sets, whole, cache)
    train_in_process(sets, split, cache, until=13)
    assert checkpoint.newest_valid(split).name == "step_0000013"
    with open(split / "metrics.jsonl", "a") as f:
        f.write('{"step": 14, "loss": 2.')  # a line torn by a crash: dropped on resume
    train_in_process(sets, split, cache, resume="auto")

    assert losses(split) == losses(whole)
    assert_same_tensors(
        split / "checkpoints/step_0000020/model.safetensors",
        whole / "checkpoints/step_0000020/model.safetensors",
    )


def test_resume_from_an_older_checkpoint_branches_into_a_new_folder(corpus, cache, tmp_path):
    """Resuming from step 10 of a finished 20-step run in its own folder would let the old line's
    step 20 outrank the new one and pruning delete the new one's: it is refused, nothing changes.
    Into a new folder (--out) it branches, and replays 11..20 identically."""
    sets = tiny_sets(corpus, 20)
    run = tmp_path / "run"
    train_in_process(sets, run, cache)
    before = losses(run)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    first = checkpoint.list_checkpoints(run)[0]
    assert first.name == "step_0000010"
    with pytest.raises(
        UserError, match="already holds a later checkpoint \\(step_0000020\\); pass --out NEW"
    ):
        train_in_process(sets, run, cache, resume=str(first))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    branch = tmp_path / "branch"
    train_in_process(sets, branch, cache, resume=str(first))
    assert losses(branch) == before[10:]
    assert [p.name for p in checkpoint.list_checkpoints(branch)] == ["step_0000020"]
    assert_same_tensors(
        branch / "checkpoints/step_0000020/model.safetensors",
        run / "checkpoints/step_0000020/model.safetensors",
    )


# ----------------------------------------------------------------------------- kill -9 at any moment


def test_sigkill_at_random_moments_never_corrupts_the_newest_checkpoint(corpus, cache, tmp_path):
    """A real `python -m cartspec train` process, checkpointing every step, is killed with SIGKILL
    three times at random moments; every time, each visible step_* folder is complete (temporary
    folders start with '.'), at most the one step since the last save is lost, and --resume auto
    finishes with exactly the losses of an uninterrupted run."""
    steps = 50
    sets = tiny_sets(corpus, steps, "train.checkpoint.interval=1", "train.checkpoint.keep=3")
    reference = tmp_path / "reference"  # saving only at the end: checkpoints do not change the run
    train_in_process([*sets, f"train.checkpoint.interval={steps}"], reference, cache)

    run = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "cartspec",
        "train",
        str(CART_TINY),
        "--out",
        str(run),
        "--device",
        "cpu",
    ]
    command += [f"--set={s}" for s in sets]
    env = {**os.environ, "CARTSPEC_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    kills = 0
    for attempt in range(3):
        start = _newest_step(run)
        log = open(tmp_path / f"attempt{attempt}.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            command + (["--resume", "auto"] if attempt else []), env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while _newest_step(run) <= start and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # until this process has saved a checkpoint of its own
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is not None:
                break  # it finished (a very slow start); nothing left to interrupt
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()

        saved = checkpoint.list_checkpoints(run)
        assert saved, "a checkpoint existed before the kill"
        for path in saved:
            assert_complete(path)
        assert checkpoint.newest_valid(run) == saved[-1]
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p not in saved]
        assert all(name.startswith(".") for name in leftovers), leftovers
        logged = max(s for s, _ in losses(run))
        assert logged - int(saved[-1].name.split("_")[1]) <= 1, "lost more than the step since the last save"

    assert kills >= 2, "the run finished before it could be killed twice"
    proc = subprocess.run(
        command + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert losses(run) == losses(reference)
    assert_same_tensors(
        run / f"checkpoints/step_{steps:07d}/model.safetensors",
        reference / f"checkpoints/step_{steps:07d}/model.safetensors",
    )
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def _newest_step(run: Path) -> int:
    saved = checkpoint.list_checkpoints(run)
    return int(saved[-1].name.split("_")[1]) if saved else 0


# ----------------------------------------------------------------------------- the checkpoint folder


@pytest.fixture
def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_restores_weights_optimizer_and_rng(tmp_path, model_and_optimizer):
    model, optimizer = model_and_optimizer
    torch.manual_seed(7)
    path = checkpoint.save(tmp_path, 5, model, optimizer, {"data": {"position": 3}}, keep=2)
    expected_draw = torch.rand(3)

    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    loaded = checkpoint.restore(path, other, other_opt)

    assert loaded.step == 5 and loaded.state["data"] == {"position": 3}
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.state.values(), other_opt.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where the save left it


def test_save_keeps_the_newest_and_ignores_temporary_folders(tmp_path, model_and_optimizer):
    model, optimizer = model_and_optimizer
    stale = tmp_path / "checkpoints" / ".step_0000009.12345.tmp"  # left by a killed process
    stale.mkdir(parents=True)
    (stale / "state.json").write_text("{")
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, step, model, optimizer, {}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000003", "step_0000004"]


def test_saving_a_step_again_replaces_it_whole(tmp_path, model_and_optimizer):
    model, optimizer = model_and_optimizer
    path = checkpoint.save(tmp_path, 3, model, optimizer, {"loss": 1.0}, keep=2)
    (path / "model.safetensors").write_bytes(b"junk")
    checkpoint.save(tmp_path, 3, model, optimizer, {"loss": 2.0}, keep=2)
    assert_complete(path)
    assert checkpoint.read_state(path)["loss"] == 2.0


@pytest.mark.parametrize(
    "damage",
    ["truncate model", "truncate optimizer", "drop rng", "garble state", "empty state"],
)
def test_newest_valid_skips_a_damaged_newest_checkpoint(tmp_path, model_and_optimizer, damage):
    model, optimizer = model_and_optimizer
    checkpoint.save(tmp_path, 1, model, optimizer, {}, keep=3)
    newest = checkpoint.save(tmp_path, 2, model, optimizer, {}, keep=3)
    if damage.startswith("truncate"):
        f = newest / f"{damage.split()[1]}.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "drop rng":
        (newest / "rng.safetensors").unlink()
    else:
        (newest / "state.json").write_text("{" if damage == "garble state" else "")
    assert checkpoint.newest_valid(tmp_path).name == "step_0000001"


def test_newest_valid_is_none_without_a_good_checkpoint(tmp_path, model_and_optimizer):
    assert checkpoint.newest_valid(tmp_path) is None
    model, optimizer = model_and_optimizer
    only = checkpoint.save(tmp_path, 1, model, optimizer, {}, keep=1)
    (only / "model.safetensors").write_bytes(b"")
    assert checkpoint.newest_valid(tmp_path) is None


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("step", '"20"', "step is str, expected int"),
        ("step", "true", "step is bool, expected int"),
        ("step", "-3", "step is -3"),
        ("optimizer_groups", "{}", "optimizer_groups is dict, expected list"),
        ("optimizer_groups", "[1]", "not a list of parameter groups"),
        ("data", "[]", "data is list, expected dict"),
        ("data", '{"position": "0"}', "not an integer"),
        ("architecture_sha256", "7", "architecture_sha256 is int, expected str"),
    ],
)
def test_a_state_json_with_a_wrong_field_type_is_a_damaged_checkpoint(
    model_and_optimizer, tmp_path, field, value, why
):
    """An edited state.json is refused in one line and skipped by newest_valid like a truncated
    one, so --resume auto, eval and sample fall back to the checkpoint before it."""
    from cartspec.errors import UserError

    model, optimizer = model_and_optimizer
    state = {"data": {"position": 0, "n_windows": 4}, "architecture_sha256": "a" * 64}
    older = checkpoint.save(tmp_path, 1, model, optimizer, state, keep=3)
    newest = checkpoint.save(tmp_path, 2, model, optimizer, state, keep=3)
    body = json.loads((newest / "state.json").read_text())
    body[field] = json.loads(value)
    (newest / "state.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match=re.escape(why)):
        checkpoint.read_state(newest)
    assert checkpoint.newest_valid(tmp_path) == older


def test_read_state_names_what_is_wrong(tmp_path):
    from cartspec.errors import UserError

    with pytest.raises(UserError, match="not a checkpoint"):
        checkpoint.read_state(tmp_path)
    (tmp_path / "state.json").write_text('{"format": 99, "step": 1}')
    with pytest.raises(UserError, match="format 1"):
        checkpoint.read_state(tmp_path)
    (tmp_path / "state.json").write_text('{"format": 1, "step": 1}')
    with pytest.raises(UserError, match="corrupt checkpoint \\(no optimizer_groups\\)"):
        checkpoint.read_state(tmp_path)
    (tmp_path / "state.json").write_text('{"format": 1, "step": 1, "optimizer_groups": []}')
    with pytest.raises(UserError, match="model.safetensors is missing"):
        checkpoint.read_state(tmp_path)
    a_file = tmp_path / "state.json"
    with pytest.raises(UserError):
        checkpoint.read_state(a_file)  # a file, not a folder


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    corpus, cache, tmp_path, monkeypatch
):
    """From step 5 on the learning rate is infinite, so the weights and then the loss turn NaN."""
    from cartspec.runtime import loop
    from cartspec.runtime.loop import TrainingDiverged

    schedule = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, t: float("inf") if step >= 4 else schedule(step, t))
    out = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 6; stopped, the last good checkpoint is .*step_0000004"
    ):
        train_in_process(tiny_sets(corpus, 20, "train.checkpoint.interval=2"), out, cache)
    newest = checkpoint.newest_valid(out)
    assert newest is not None and newest.name == "step_0000004"
    weights = load_file(str(newest / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_read_state_requires_every_file_of_the_checkpoint(tmp_path, model_and_optimizer):
    """A folder missing any one of its safetensors files is named incomplete, before any load."""
    from cartspec.errors import UserError

    model, optimizer = model_and_optimizer
    path = checkpoint.save(tmp_path, 1, model, optimizer, {}, keep=1)
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        data = (path / name).read_bytes()
        (path / name).unlink()
        with pytest.raises(UserError, match=f"incomplete checkpoint, {name} is missing"):
            checkpoint.read_state(path)
        (path / name).write_bytes(data)
    checkpoint.read_state(path)
