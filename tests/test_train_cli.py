"""Bad input at the runtime commands (train, eval, sample): exit code 2, one line on stderr, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from gen_helpers import BYTES_CART_SETS, assert_clean_error, word_corpus
from safetensors.torch import load_file

from cartspec.resolve import resolve
from cartspec.runtime import checkpoint, rundir
from cartspec.runtime.loop import Options, train

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
TINY = [
    *BYTES_CART_SETS,
    "train.micro_batch=4",
    "train.schedule.warmup=5",
    "train.eval.batches=8",
    "train.eval.interval=10",
    "train.checkpoint.interval=10",
    "train.checkpoint.keep=2",
    "train.log_interval=1",
    "train.steps=20",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: enough for a model this small, and robust on a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process CLI finds its token cache through $CARTSPEC_CACHE."""
    monkeypatch.setenv("CARTSPEC_CACHE", str(cache))


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """TINY on a small generated corpus (two hundred paragraphs)."""
    return [*TINY, f"train.data.source={word_corpus(tmp_path_factory.mktemp('corpus'), paragraphs=200)}"]


@pytest.fixture(scope="module")
def trained(sets: list[str], cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step run with checkpoints at steps 10 and 20. Copy it before changing it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(resolve(CART_TINY, sets), Options(out=out, device="cpu", cache_dir=cache, progress="off"))
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step_0000010", "step_0000020"]
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def cli_args(sets: list[str]) -> list[str]:
    return [f"--set={s}" for s in sets]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


# ----------------------------------------------------------------------------- eval and sample


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_missing_run_directory_is_named(cli, tmp_path, command):
    assert_clean_error(cli(command, str(tmp_path / "nope")), "nope", "no such run directory")


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_folder_that_is_not_a_run_is_named(cli, tmp_path, command):
    assert_clean_error(cli(command, str(tmp_path)), "not a run directory")


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_run_without_checkpoints_is_refused(cli, run, command):
    shutil.rmtree(run / "checkpoints")
    assert_clean_error(cli(command, str(run)), "no valid checkpoint")


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize(
    ("before", "after", "at"),
    [
        ("max_loops: 16", "max_loops: 2", "max_loops: 2"),  # a loop table shorter than the loop count
        ("head_dim: 16", "head_dim: 24", "d_model: 32"),  # d_model 32 is not a whole number of heads
    ],
)
def test_a_spec_yaml_that_fails_a_semantic_check_is_located(cli, run, command, before, after, at):
    """spec.yaml passes the same checks as a spec file: the problem is reported at its line."""
    spec = run / "spec.yaml"
    assert before in spec.read_text()
    spec.write_text(spec.read_text().replace(before, after))
    rc, out, err = cli(command, str(run))
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"{run / 'spec.yaml'}:") for line in lines), err
    assert any(line.startswith(f"{spec}:{line_of(spec, at)}:") for line in lines), err


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_model_py_generated_from_another_spec_is_refused(cli, run, command):
    model = run / "model.py"
    text = model.read_text()
    sha = text.split('ARCHITECTURE_SHA256 = "', 1)[1][:64]
    model.write_text(text.replace(sha, "0" * 64))
    assert_clean_error(cli(command, str(run)), str(model), "ARCHITECTURE_SHA256")


def test_eval_on_missing_data_is_named(cli, run, tmp_path):
    assert_clean_error(cli("eval", str(run), "--data", str(tmp_path / "gone.txt")), "gone.txt")


@pytest.mark.parametrize("loops", ["0", "two", "1,,x"])
def test_eval_rejects_malformed_loop_counts(cli, run, loops):
    assert_clean_error(cli("eval", str(run), "--loops", loops), "--loops")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--top-p", "0"), "--top-p: expected a number in (0, 1], got 0.0"),
        (("--top-p", "1.5"), "--top-p: expected a number in (0, 1]"),
        (("--exit-threshold", "0"), "--exit-threshold: expected a number in (0, 1]"),
        (("--loops", "0"), "--loops: expected 1 to 256, got 0"),
        (("--temperature", "-1"), "--temperature: expected 0 (greedy) or a finite value"),
        (("--exit-threshold", "0.1", "--no-cache"), "drop --no-cache"),
        (("--loops", "17"), "loops must be in 1..16"),  # the loop table has 16 rows
        (("--prompt-file", "nowhere.txt"), "no such file"),
        (("--prompt", "x", "--prompt-file", "spec.yaml"), "pick one"),
    ],
)
def test_sample_refuses_bad_decoding_options_in_one_line(cli, run, args, fragment):
    rc = cli("sample", str(run), *[str(run / a) if a.endswith((".txt", ".yaml")) else a for a in args])
    assert_clean_error(rc, fragment)


@pytest.mark.parametrize(
    ("content", "fragment"), [(b"\n  \n", "no prompt in it"), (b"\xff\xfe", "not UTF-8")]
)
def test_sample_refuses_an_empty_or_binary_prompt_file(cli, run, content, fragment):
    (run / "prompts.txt").write_bytes(content)
    assert_clean_error(cli("sample", str(run), "--prompt-file", str(run / "prompts.txt")), fragment)


def test_eval_and_sample_skip_a_corrupt_newest_checkpoint(cli, run, trained):
    truncate(run / "checkpoints/step_0000020/model.safetensors")
    rc, out, err = cli("eval", str(run), "--json")
    assert rc == 0, err
    assert json.loads(out)["rows"][0]["loops"] == 4
    rc, out, err = cli("sample", str(run), "--prompt", "and the", "--max-new-tokens", "5")
    assert rc == 0, err
    assert out.startswith("and the")


def test_eval_uses_the_runs_own_tokenizer_after_the_corpus_changed(cli, sets, cache, tmp_path):
    """A BPE run's validation loss from eval equals the one at the end of training even after
    documents were added to the front of its corpus (which would train a different BPE)."""
    corpus = tmp_path / "corpus.txt"
    source = next(s for s in sets if s.startswith("train.data.source="))
    original = Path(source.split("=", 1)[1]).read_text()
    corpus.write_text(original)
    bpe = [*sets, f"train.data.source={corpus}", "train.data.tokenizer=bpe", "train.steps=10"]
    out = tmp_path / "bpe"
    summary = train(resolve(CART_TINY, bpe), Options(out=out, device="cpu", cache_dir=cache, progress="off"))
    n_docs = original.count("\n\n") + 1
    extra = 9 if round((n_docs + 9) * 0.05) == round(n_docs * 0.05) else 1  # keep the same held-out documents
    corpus.write_text("\n\n".join(["xq zv " * 400] * extra) + "\n\n" + original)
    rc, out_text, err = cli("eval", str(out), "--json")
    assert rc == 0, err
    assert json.loads(out_text)["rows"][0]["val_loss"] == pytest.approx(summary.val_loss, rel=1e-6)


# ----------------------------------------------------------------------------- train --resume


def test_resume_from_a_missing_path_is_refused(cli, sets, run, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", str(missing))
    assert_clean_error(result, str(missing), "no such checkpoint")


def test_resume_from_a_file_that_is_not_a_checkpoint_is_refused(cli, sets, run):
    a_file = run / "spec.yaml"
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", str(a_file))
    assert_clean_error(result, "not a checkpoint")


def test_resume_auto_falls_back_past_a_corrupt_newest_checkpoint(cli, sets, run, trained):
    """step_20's weights are truncated: --resume auto says so, continues from step_10 and, being
    exact, rewrites step_20 bit for bit as it was."""
    truncate(run / "checkpoints/step_0000020/model.safetensors")
    assert checkpoint.newest_valid(run).name == "step_0000010"
    rc, _, err = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto")
    assert rc == 0, err
    warning, opening, *progress = err.splitlines()  # then the run's opening line and its progress
    assert warning == (
        f"warning: {run / 'checkpoints/step_0000020'} does not read back whole; resuming from step_0000010"
    )
    assert "then training steps 11 to 20 of" in opening
    assert [line.split()[2] for line in progress] == [f"{step}/20" for step in range(11, 21)]
    good = load_file(str(trained / "checkpoints/step_0000020/model.safetensors"))
    redone = load_file(str(run / "checkpoints/step_0000020/model.safetensors"))
    assert good.keys() == redone.keys()
    assert all(torch.equal(good[k], redone[k]) for k in good)
    assert (run / "metrics.jsonl").read_text() != ""
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_resume_auto_refuses_to_start_over_when_every_checkpoint_is_corrupt(cli, sets, run):
    for path in checkpoint.list_checkpoints(run):
        truncate(path / "model.safetensors")
    before = (run / "metrics.jsonl").read_text()
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto")
    assert_clean_error(result, "none of its checkpoints")
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_auto_in_a_new_run_directory_starts_fresh(cli, sets, tmp_path):
    rc, _, err = cli(
        "train",
        str(CART_TINY),
        *cli_args(sets),
        "--out",
        str(tmp_path / "new"),
        "--resume",
        "auto",
        "--until",
        "2",
    )
    assert rc == 0, err
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "new")] == ["step_0000002"]


@pytest.mark.parametrize(
    "damage", ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
)
def test_an_explicit_corrupt_checkpoint_is_refused(cli, sets, run, damage):
    newest = run / "checkpoints/step_0000020"
    truncate(newest / damage)
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", str(newest))
    assert_clean_error(result, "step_0000020", "corrupt")


def test_a_checkpoint_of_another_spec_is_refused(cli, sets, run, cache, tmp_path):
    wider = [*sets, "model.d_model=48", "train.steps=10"]
    train(
        resolve(CART_TINY, wider),
        Options(out=tmp_path / "wider", device="cpu", cache_dir=cache, progress="off"),
    )
    foreign = tmp_path / "wider/checkpoints/step_0000010"
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", str(foreign))
    assert_clean_error(result, "step_0000010", "different spec")
    # dropped into the run as its newest checkpoint, --resume auto refuses it too
    shutil.copytree(foreign, run / "checkpoints/step_0000030")
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto")
    assert_clean_error(result, "step_0000030", "different spec")


def test_resuming_with_a_changed_model_is_refused_and_leaves_the_run_intact(cli, sets, run):
    files = {name: (run / name).read_bytes() for name in ("model.py", "spec.yaml", "metrics.jsonl")}
    result = cli(
        "train",
        str(CART_TINY),
        *cli_args(sets),
        "--set=model.d_model=48",
        "--out",
        str(run),
        "--resume",
        "auto",
    )
    assert_clean_error(result, "step_0000020", "different spec")
    assert {name: (run / name).read_bytes() for name in files} == files
    rc, _, err = cli("eval", str(run))  # the run still loads: its model.py still fits its weights
    assert rc == 0, err


def test_a_second_train_into_a_run_with_checkpoints_is_refused(cli, sets, run):
    before = (run / "metrics.jsonl").read_text()
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run))
    assert_clean_error(result, "already holds checkpoints", "--resume auto")
    assert (run / "metrics.jsonl").read_text() == before  # nothing was touched


def test_an_unknown_device_is_refused(cli, sets, tmp_path):
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(tmp_path / "r"), "--device", "tpu")
    assert_clean_error(result, "--device")


# ----------------------------------------------------------------------------- as a real process


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_clean_error(run_cli, sets, cache, tmp_path):
    result = run_cli(
        "train",
        str(CART_TINY),
        *cli_args(sets),
        "--out",
        str(tmp_path / "r"),
        "--device",
        "cuda",
        env={"CARTSPEC_CACHE": str(cache)},
    )
    assert_clean_error(result, "--device cuda", "no CUDA device")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_corrupt_explicit_checkpoint_is_a_clean_error_in_a_real_process(run_cli, sets, run, cache):
    newest = run / "checkpoints/step_0000020"
    truncate(newest / "model.safetensors")
    result = run_cli(
        "train",
        str(CART_TINY),
        *cli_args(sets),
        "--out",
        str(run),
        "--resume",
        str(newest),
        env={"CARTSPEC_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
    )
    assert_clean_error(result, "corrupt")


# ----------------------------------------------------------------------------- one run, one line of training


def snapshot(run: Path) -> dict[Path, bytes]:
    """Every file of a run folder with its bytes (the lock file aside), to show nothing changed."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != rundir.LOCK}


def strict_json(text: str) -> dict:
    """Parse JSON as other tools do: a bare NaN or Infinity is an error."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_second_training_in_a_run_folder_being_trained_is_refused(cli, sets, run):
    """Two trainings in one folder used to interleave metrics.jsonl and crash one another."""
    before = snapshot(run)
    with rundir.locked(run):  # a training holds the folder
        result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto")
    assert_clean_error(result, str(run), "another training is writing to this run directory", "--out")
    assert snapshot(run) == before


def test_until_below_the_resumed_step_is_refused(cli, sets, run):
    """It used to exit 0 with a NaN loss and a negative throughput."""
    before = snapshot(run)
    result = cli(
        "train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto", "--until", "5"
    )
    assert_clean_error(result, "--until 5", "already at step 20")
    assert snapshot(run) == before
    result = cli(
        "train", str(CART_TINY), *cli_args(sets), "--steps", "15", "--out", str(run), "--resume", "auto"
    )
    assert_clean_error(result, "train.steps 15", "already at step 20")
    assert snapshot(run) == before


def test_resuming_a_finished_run_trains_nothing_and_prints_valid_json(cli, sets, run):
    rc, out, err = cli(
        "train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto", "--json"
    )
    assert rc == 0, err
    summary = strict_json(out)
    last = json.loads((run / "checkpoints/step_0000020/state.json").read_text())["loss"]
    assert summary["steps"] == 20 and summary["train_loss"] == last
    assert summary["tokens_per_s"] == 0


def test_json_summary_writes_null_for_a_non_finite_number(capsys):
    from cartspec.console import print_json

    print_json({"train_loss": float("nan"), "rows": [{"val": float("inf")}, 1.5]})
    assert strict_json(capsys.readouterr().out) == {"train_loss": None, "rows": [{"val": None}, 1.5]}


def test_an_empty_resume_value_is_named(cli, sets, run):
    """It used to read as the current folder: "`.`: not a checkpoint"."""
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "")
    assert_clean_error(result, "--resume: expected auto or a checkpoint folder, got an empty value")


def test_resume_auto_falls_back_past_a_state_json_with_a_wrong_field_type(cli, sets, run):
    state = run / "checkpoints/step_0000020/state.json"
    state.write_text(state.read_text().replace('"step": 20', '"step": "20"'))
    rc, _, err = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(run), "--resume", "auto")
    assert rc == 0, err
    assert "resuming from step_0000010" in err
    assert checkpoint.read_state(run / "checkpoints/step_0000020")["step"] == 20  # rewritten whole


def test_a_change_of_optimizer_groups_on_resume_is_one_line(cli, sets, run):
    result = cli(
        "train", str(CART_TINY), *cli_args(sets), "--set=train.optimizer.decay=matrices",
        "--out", str(run), "--resume", "auto",
    )  # fmt: skip
    assert_clean_error(result, "step_0000020", "parameter groups", "train.optimizer.decay")


# ----------------------------------------------------------------------------- model.py is code


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_code_appended_to_model_py_never_runs(cli, run, tmp_path, command):
    """ARCHITECTURE_SHA256 stays intact when code is appended; the checkpoint's sha256 of the
    whole file does not, and the file is refused before it is imported."""
    marker = tmp_path / "RAN"
    with open(run / "model.py", "a") as f:
        f.write(f"\nfrom pathlib import Path\nPath({str(marker)!r}).touch()\n")
    assert_clean_error(
        cli(command, str(run)), "model.py", "differs from the file its checkpoint was trained with"
    )
    assert not marker.exists()


def test_a_checkpoint_records_the_sha256_of_the_model_py_it_was_trained_with(trained):
    state = checkpoint.read_state(trained / "checkpoints/step_0000020")
    assert state["model_sha256"] == rundir.model_sha256(trained)


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_missing_model_py_is_named(cli, run, command):
    (run / "model.py").unlink()
    assert_clean_error(cli(command, str(run)), "no model.py")


def test_eval_loops_beyond_any_spec_are_refused_before_loading(cli, run):
    """cart_tiny has a loop-embedding table; a model without one had no upper bound at all."""
    assert_clean_error(cli("eval", str(run), "--loops", "1000000"), "--loops", "at most 256")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "in the \udcff"], "--prompt: not valid UTF-8 text (at character 7)"),  # argv byte 0xff
        (["--temperature", "1e-300"], "--temperature: expected 0 (greedy) or a finite value of at least"),
        (["--temperature", "inf"], "--temperature: expected 0 (greedy)"),
        (["--seed", str(2**64)], "--seed: expected an integer from 0 to 2^64 - 1"),
        (["--seed", "-1"], "--seed: expected an integer from 0 to 2^64 - 1"),
    ],
)
def test_sample_arguments_that_torch_would_fail_on_are_one_line(cli, run, args, message):
    """They used to end in a UnicodeEncodeError, a NaN in multinomial or a seed overflow traceback."""
    assert_clean_error(cli("sample", str(run), *args, "--max-new-tokens", "3"), message)


def test_eval_data_gets_the_checks_train_makes(cli, run, tmp_path):
    """Ids beyond the vocabulary used to end in an IndexError traceback from the embedding; a
    token folder was memory-mapped as if it were a file."""
    import numpy as np

    np.array([1, 2, 299, 5000, 7] * 100, dtype=np.uint16).tofile(tmp_path / "big.bin")
    assert_clean_error(
        cli("eval", str(run), "--data", str(tmp_path / "big.bin")), "token id 5000", "vocab of 300"
    )
    folder = tmp_path / "tokens"
    folder.mkdir()
    np.array([1, 2, 3] * 100, dtype=np.uint16).tofile(folder / "train.bin")
    assert_clean_error(cli("eval", str(run), "--data", str(folder)), "needs a val.bin")
    np.array([1, 2, 299, 5, 7] * 100, dtype=np.uint16).tofile(folder / "val.bin")
    rc, out, err = cli("eval", str(run), "--data", str(folder), "--json")
    assert rc == 0, err


def test_a_full_disk_during_training_is_one_line_naming_the_file(cli, sets, tmp_path, monkeypatch):
    """The machine refusing a write (full disk, read-only folder) used to end in a traceback."""
    import errno

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "metrics.jsonl"))

    monkeypatch.setattr(rundir.Metrics, "write", full)
    result = cli("train", str(CART_TINY), *cli_args(sets), "--out", str(tmp_path / "r"), "--until", "2")
    assert_clean_error(result, f"{tmp_path / 'r' / 'metrics.jsonl'}: no space left on device")


def test_a_fifo_in_a_run_folder_never_blocks(run_cli, run, cache):
    """A run folder is untrusted input too: a FIFO as the newest checkpoint's state.json used to
    block eval forever; it is skipped like any damaged checkpoint. A real process with a timeout."""
    import os

    state = run / "checkpoints/step_0000020/state.json"
    state.unlink()
    os.mkfifo(state)
    rc, out, err = run_cli(
        "eval",
        str(run),
        "--device",
        "cpu",
        "--json",
        env={"CARTSPEC_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
    )
    assert rc == 0, err
    assert json.loads(out)["rows"][0]["loops"] == 4


@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_vocabulary_too_small_for_the_tokenizer_is_refused_before_training(cli, tmp_path, command):
    """What validate accepts, train runs: a bpe or bytes tokenizer needs 258 ids (params still counts it)."""
    args = (command, str(CART_TINY), "--set", "model.vocab_size=64", "--set", "train.data.tokenizer=bytes")
    rc, out, err = cli(*args, *(["--out", str(tmp_path / "run")] if command == "train" else []))
    assert rc == 2, (out, err)
    assert "model.vocab_size: 64 is below the 258 tokens a bytes tokenizer needs" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert cli("params", str(CART_TINY), "--set", "model.vocab_size=64")[0] == 0
