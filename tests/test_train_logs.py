"""What a training tells a batch job: plain progress lines on a piped stderr while it trains, an
opening line with a time estimate, MFU and peak memory in metrics.jsonl, TensorBoard events;
and run files a group can read."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gen_helpers import SHORT_RECIPE, word_corpus

from cartspec.resolve import resolve
from cartspec.runtime import checkpoint
from cartspec.runtime.atomic import umask
from cartspec.runtime.loop import Options, train
from cartspec.throughput import peak_flops, train_flops_per_token

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
PROGRESS = re.compile(
    r"^cart_tiny step (\d+)/(\d+)  loss \d+\.\d{4}  lr \S+  tokens/s [\d,]+  .*eta \d+:\d\d:\d\d$"
)


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [*SHORT_RECIPE, f"train.data.source={word_corpus(tmp_path_factory.mktemp('corpus'))}"]


def test_a_piped_training_prints_an_estimate_then_progress_lines_while_it_trains(sets, tmp_path):
    """A batch job's log (stderr a pipe) used to stay empty until the summary. The first
    progress line must arrive while the run is still training: the run has 500 steps to go
    when it is read, and is stopped then."""
    command = [sys.executable, "-m", "cartspec", "train", str(CART_TINY), "--out", str(tmp_path / "run")]
    command += [arg for s in [*sets, "train.steps=500"] for arg in ("--set", s)]
    env = {**os.environ, "CARTSPEC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    ) as proc:
        try:
            lines = [proc.stderr.readline() for _ in range(2)]
            still_training = proc.poll() is None
        finally:
            proc.kill()
    opening, first = (line.rstrip("\n") for line in lines)
    assert (
        opening.startswith("cart_tiny: preparing data (")
        and "then training 500 steps of 128 tokens on cpu" in opening
    )
    assert re.search(
        r": about [\d.]+ (s|min|h|days) \(an estimate: .* training FLOPs at half the .* GFLOP/s", opening
    )
    assert PROGRESS.match(first), first
    assert first.startswith("cart_tiny step 2/500  ")
    assert still_training
    assert "\x1b" not in opening + first  # no terminal escape codes in a log file


def test_metrics_hold_mfu_and_peak_memory_and_tensorboard_mirrors_them(sets, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    resolved = resolve(CART_TINY, [*sets, "train.steps=4", "train.eval.interval=4"])
    out = tmp_path / "run"
    train(
        resolved,
        Options(
            out=out,
            device="cpu",
            cache_dir=tmp_path / "cache",
            progress="lines",
            tensorboard=True,
            peak_tflops=0.5,
        ),
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:  # the FLOPs of accounting at train.seq_len, over the given peak
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * train_flops_per_token(resolved) / 0.5e12)
        assert (
            50 < r["peak_memory_mb"] < 1e5
        )  # this process's peak resident set: torch alone is more than 50 MB
    err = capsys.readouterr().err.splitlines()
    assert [PROGRESS.match(line).group(1) for line in err[1:]] == ["2", "4"]
    assert "val_loss" in err[-1] and f"mfu {records[-1]['mfu']:.1%}" in err[-1]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {
        "train/loss",
        "train/lr",
        "train/tokens_per_s",
        "train/mfu",
        "train/peak_memory_mb",
        "val/loss",
    } <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in records
    ]


def test_the_peak_table_knows_the_common_gpus_by_their_device_names():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA GeForce RTX 3090") == 71e12
    assert peak_flops("cpu") is None and peak_flops(None) is None


def test_training_flops_follow_the_sampled_depth_schedule():
    """Fewer loops with gradients cost less: truncated backprop lowers the MFU's FLOPs."""
    full = train_flops_per_token(resolve(CART_TINY))
    truncated = train_flops_per_token(resolve(CART_TINY, ["train.depth.backprop=1"]))
    assert truncated < full
    report = resolve(CART_TINY, ["model.max_seq_len=128"]).params  # train.seq_len is 128
    assert full == report.flops.train_per_token + 6 * 1024 * 128  # accounting's, plus the head's 3 x 2Vd


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf", ""])
def test_a_bad_peak_tflops_is_one_line(cli, tmp_path, value):
    rc, out, err = cli("train", str(CART_TINY), "--out", str(tmp_path / "r"), "--peak-tflops", value)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        f"error: --peak-tflops: expected a positive number of TFLOP/s (e.g. 989), got {value!r}"
    )
    assert not (tmp_path / "r").exists()


def test_tensorboard_without_its_package_is_one_line_before_any_work(cli, sets, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    rc, out, err = cli("train", str(CART_TINY), "--out", str(tmp_path / "r"), "--tensorboard")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        "error: --tensorboard needs the tensorboard package: pip install 'cartspec[tensorboard]'"
    )
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- permissions


def modes(run: Path) -> dict[str, int]:
    return {p.relative_to(run).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}


@pytest.fixture
def mask():
    """Set the process's umask for the test, and put it back."""
    before = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(before)


def test_every_run_file_is_readable_by_the_group_under_umask_022(sets, tmp_path, mask):
    """Checkpoints were written 0600: colleagues on a shared disk could not evaluate a run.
    Also: no MFU on a CPU without a given peak (no table holds a CPU's: it would be made up)."""
    mask(0o022)
    out = tmp_path / "run"
    resolved = resolve(
        CART_TINY, [*sets, "train.steps=2", "train.eval.interval=2", "train.checkpoint.interval=2"]
    )
    train(resolved, Options(out=out, device="cpu", cache_dir=tmp_path / "cache", progress="off"))
    found = modes(out)
    assert {"checkpoints/step_0000002/model.safetensors", "model.py", "env.json", "metrics.jsonl"} <= set(
        found
    )
    wrong = {
        name: oct(mode) for name, mode in found.items() if mode != (0o755 if (out / name).is_dir() else 0o644)
    }
    assert wrong == {}
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["mfu"] is None and record["peak_memory_mb"] > 0


def test_a_checkpoint_follows_a_tighter_umask_too(tmp_path, mask):
    mask(0o027)
    assert umask() == 0o027
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    saved = checkpoint.save(tmp_path, 1, model, optimizer, {}, keep=1)
    assert {oct(mode) for mode in modes(saved).values()} == {oct(0o640)}
