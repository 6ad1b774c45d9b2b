"""``train --init-from``: a new run (new data, new recipe, a tokenizer that fits) from trained
weights, its step counter and optimizer fresh, its source recorded; weights that do not fit are
refused with one located line per parameter, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gen_helpers import SHORT_RECIPE, word_corpus
from safetensors.torch import load_file

from cartspec.resolve import resolve
from cartspec.runtime import checkpoint
from cartspec.runtime.loop import Options, train

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
pytestmark = pytest.mark.usefixtures("cartspec_cache")  # the in-process CLI's token cache


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, token_cache: Path) -> Path:
    """A finished 4-step run on one corpus: the weights the tests start from."""
    out = tmp_path_factory.mktemp("source") / "run"
    sets = [*SHORT_RECIPE, "train.steps=4", f"train.data.source={word_corpus(out.parent, 0)}"]
    train(resolve(CART_TINY, sets), Options(out=out, device="cpu", cache_dir=token_cache, progress="off"))
    return out


def args(*sets: str) -> list[str]:
    return [f"--set={s}" for s in [*SHORT_RECIPE, *sets]]


def test_a_new_run_starts_from_the_weights_with_its_own_steps_optimizer_data_and_recipe(
    cli, source, tmp_path
):
    """Another corpus, another recipe, 6 loops instead of 4 (no shape changes): the weights are
    the source's (a learning rate of 1e-9 leaves them so), the steps count from 0 and AdamW's
    step count is this run's."""
    out = tmp_path / "new"
    new = [f"train.data.source={word_corpus(tmp_path, 1)}", "train.steps=2", "train.optimizer.lr=1e-9"]
    new += ["train.schedule.min_lr=0", "train.optimizer.weight_decay=0", "blocks.core.loops=6"]
    rc, _, err = cli("train", str(CART_TINY), *args(*new), "--out", str(out), "--init-from", str(source))
    assert rc == 0, err
    assert "note: --init-from" in err and "architecture differs" in err  # 6 loops: fits, said once
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step_0000002"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2]
    trained = load_file(str(out / "checkpoints/step_0000002/model.safetensors"))
    start = load_file(str(source / "checkpoints/step_0000004/model.safetensors"))
    assert trained.keys() == start.keys()
    assert max((trained[k] - start[k]).abs().max().item() for k in start) < 1e-6
    assert load_file(str(out / "checkpoints/step_0000002/optimizer.safetensors"))["0.step"].item() == 2

    recorded = json.loads((out / "env.json").read_text())["init_from"]
    assert recorded["checkpoint"] == str((source / "checkpoints/step_0000004").resolve())
    assert recorded["step"] == 4
    assert checkpoint.read_state(out / "checkpoints/step_0000002")["init_from"] == recorded
    rc, _, err = cli("train", str(CART_TINY), *args(*new), "--out", str(out), "--resume", "auto")
    assert rc == 0, err  # a finished run resumed trains nothing and keeps where it came from
    assert json.loads((out / "env.json").read_text())["init_from"] == recorded


def test_a_new_tokenizer_that_fits_the_vocabulary_is_taken_and_noted(cli, source, tmp_path):
    """The source read bytes (258 ids); a BPE of 300 tokens fits the model's 300 rows."""
    out = tmp_path / "bpe"
    sets = args(f"train.data.source={word_corpus(tmp_path, 2)}", "train.data.tokenizer=bpe", "train.steps=2")
    rc, _, err = cli("train", str(CART_TINY), *sets, "--out", str(out), "--init-from", str(source))
    assert rc == 0, err
    assert "trained with another tokenizer; its token embeddings are reused by id" in err
    assert (
        json.loads((out / "env.json").read_text())["init_from"]["tokenizer"]
        != checkpoint.read_state(out / "checkpoints/step_0000002")["tokenizer"]
    )


def test_every_parameter_that_does_not_fit_is_one_located_line_and_nothing_is_written(cli, source, tmp_path):
    """One prelude layer fewer, one coda layer more, and a wider loop embedding."""
    out = tmp_path / "wrong"
    sets = args("blocks.prelude.layers=1", "blocks.coda.layers=2", "blocks.core.loop_embedding.dim=16")
    rc, _, err = cli("train", str(CART_TINY), *sets, "--out", str(out), "--init-from", str(source))
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    where = f"--init-from {source / 'checkpoints/step_0000004/model.safetensors'}: "
    assert all(line.startswith(where) for line in lines), lines
    problems = {line[len(where) :] for line in lines}
    assert "coda.1.attn.q_proj.weight: shape [32, 32] in this model, not in the checkpoint" in problems
    assert "prelude.1.attn.q_proj.weight: shape [32, 32] in the checkpoint, not in this model" in problems
    assert (
        "loop_embedding.proj.weight: shape [32, 32] in the checkpoint, shape [32, 16] in this model"
        in problems
    )
    assert len(lines) == 21  # the 10 tensors of prelude.1, the 10 of coda.1, the loop embedding's projection
    assert not (out / "model.py").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "--init-from: expected a run folder or a checkpoint folder, got an empty value"),
        ("{tmp}/nope", "--init-from {tmp}/nope: no such run or checkpoint"),
        ("{tmp}", "--init-from {tmp}: neither a run folder nor a checkpoint folder"),
    ],
)
def test_a_bad_init_from_is_one_line(cli, tmp_path, value, message):
    value, message = value.format(tmp=tmp_path), message.format(tmp=tmp_path)
    rc, _, err = cli("train", str(CART_TINY), *args(), "--out", str(tmp_path / "r"), "--init-from", value)
    assert (rc, err.strip()) == (2, f"error: {message}")


def test_init_from_into_a_folder_with_checkpoints_is_one_line(cli, source):
    rc, _, err = cli("train", str(CART_TINY), *args(), "--out", str(source), "--init-from", str(source))
    assert (rc, err.strip()) == (
        2,
        f"error: {source} already holds checkpoints; --init-from starts a new run: pass --out NEW",
    )


def test_init_from_with_resume_is_one_line(cli, source, tmp_path):
    rc, _, err = cli("train", str(CART_TINY), *args(), "--init-from", str(source), "--resume", "auto")
    assert (rc, err.strip()) == (
        2,
        "error: --init-from starts a new run from trained weights, --resume continues one: pick one",
    )


def test_a_damaged_source_is_one_line(cli, source, tmp_path):
    """A run whose every checkpoint is damaged, and a checkpoint whose weights file is."""
    import shutil

    run = Path(shutil.copytree(source, tmp_path / "damaged"))
    weights = run / "checkpoints/step_0000004/model.safetensors"
    weights.write_bytes(b"\xff" * 16)
    rc, _, err = cli("train", str(CART_TINY), *args(), "--out", str(tmp_path / "a"), "--init-from", str(run))
    assert (rc, err.strip()) == (
        2,
        f"error: --init-from {run}: the run holds no checkpoint that reads back whole",
    )
    rc, _, err = cli(
        "train", str(CART_TINY), *args(), "--out", str(tmp_path / "b"), "--init-from", str(weights.parent)
    )
    assert rc == 2 and err.startswith(f"error: {weights}: corrupt checkpoint") and len(err.splitlines()) == 1
