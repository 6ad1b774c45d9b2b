"""``cartspec eval RUN --tasks``: lm-evaluation-harness tasks on the generated model, one row per
loop count, offline, over the local tasks in tests/harness_tasks; the adapter's scores agree with
the model's own loss and decoding; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_train_cli import assert_clean_error, one_thread  # noqa: F401 (one torch thread, autouse)

# datasets and huggingface_hub read these when imported: set before lm-eval imports them
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval")

from cartspec.runtime.decode import Decoding, Sampling, decode  # noqa: E402
from cartspec.runtime.trained import load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = "tests/harness_tasks"  # its task files name their data relative to the repository root


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.fixture
def local_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's task index holding only the local tasks: building the index of its thousands of
    built-in tasks takes seconds, and what is checked here is how names are looked up in it."""
    from lm_eval.tasks import TaskManager

    class LocalOnly(TaskManager):
        def __init__(self, include_path=None, include_defaults=True, **kwargs):
            paths = (
                list(include_path) if isinstance(include_path, list) else [include_path] * bool(include_path)
            )
            builtin = [ROOT / TASKS] if include_defaults else []  # the local tasks stand in for them
            super().__init__(include_path=[*paths, *builtin], include_defaults=False, **kwargs)

    monkeypatch.setattr("lm_eval.tasks.TaskManager", LocalOnly)


@pytest.fixture(scope="module")
def adapter(tiny_run):
    from cartspec.runtime.harness import CartspecLM

    return CartspecLM(load_run(tiny_run("dense"), torch.device("cpu")), device="cpu")


def requests(*args) -> list[SimpleNamespace]:
    return [SimpleNamespace(args=a) for a in args]


def test_every_local_task_at_each_loop_count_is_one_row(tiny_run, cli):
    rc, out, err = cli(
        "eval", str(tiny_run("cart")), "--tasks", TASKS, "--loops", "1,4", "--json", "--device", "cpu"
    )
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert [r["loops"] for r in rows] == [1, 4]
    for row in rows:
        results = row["results"]
        assert set(results) == {"cartspec_choice", "cartspec_perplexity", "cartspec_generate"}
        assert 0 <= results["cartspec_choice"]["acc"] <= 1 and results["cartspec_choice"]["sample_len"] == 12
        assert results["cartspec_perplexity"]["byte_perplexity"] > 1
        assert 0 <= results["cartspec_generate"]["exact_match"] <= 1
    perplexities = [r["results"]["cartspec_perplexity"]["word_perplexity"] for r in rows]
    assert perplexities[0] != perplexities[1]  # the loop count reached the model


def test_a_task_by_name_prints_a_table_row_per_loop_count(tiny_run, cli, local_index):
    args = ("eval", str(tiny_run("cart")), "--tasks", "cartspec_choice", "--loops", "1,4", "--limit", "3")
    rc, out, err = cli(*args, "--device", "cpu")
    assert rc == 0, err
    assert "lm-eval tasks by loop count" in out and "acc_norm" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["1", "4 *"]


def test_loglikelihood_is_the_models_own_loss(adapter):
    run = adapter.run
    text = "and the lord said unto him in that day"
    ids = [run.tokenizer.bos_id, *run.tokenizer.encode(text)]
    with torch.no_grad():
        _, loss = run.model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    expected = -loss.item() * (len(ids) - 1)
    [(logprob, _)] = adapter.loglikelihood(requests(("", text)))
    [rolling] = adapter.loglikelihood_rolling(requests((text,)))
    assert math.isclose(logprob, expected, rel_tol=1e-5) and math.isclose(rolling, expected, rel_tol=1e-5)


def test_batches_padded_on_the_right_score_as_one_at_a_time(adapter):
    pairs = [("and the lord", " said"), ("in", " that day of light and"), ("", "him"), ("unto him", "")]
    batched = adapter.loglikelihood(requests(*pairs))
    adapter.batch, size = 1, adapter.batch
    try:
        alone = adapter.loglikelihood(requests(*pairs))
    finally:
        adapter.batch = size
    assert all(
        math.isclose(a, b, abs_tol=1e-4) and ga == gb for (a, ga), (b, gb) in zip(batched, alone, strict=True)
    )
    assert batched[3] == (0.0, True)


def test_a_text_longer_than_the_window_is_scored_window_by_window(adapter):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = "and the lord said unto him in that day of light " * 6
    ids = adapter.tokenizer.encode(text)
    assert len(ids) > 2 * adapter.window
    expected = 0.0
    windows = get_rolling_token_windows(ids, adapter.tokenizer.bos_id, adapter.window, context_len=1)
    for context, predicted in map(make_disjoint_window, windows):
        inputs = (context + predicted)[:-1]
        with torch.no_grad():
            logprobs = adapter.run.model(torch.tensor([inputs]))[0][0].log_softmax(-1)
        first = len(inputs) - len(predicted)
        expected += sum(logprobs[first + k, t].item() for k, t in enumerate(predicted))
    [rolling] = adapter.loglikelihood_rolling(requests((text,)))
    assert math.isclose(rolling, expected, rel_tol=1e-5)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(adapter):
    run, tok = adapter.run, adapter.tokenizer
    context = "and the lord said"
    greedy = decode(
        run.model,
        [tok.bos_id, *tok.encode(context)],
        12,
        window=adapter.window,
        vocab=tok.vocab_size,
        stop=tok.eos_id,
        sampling=Sampling(temperature=0),
        decoding=Decoding(),
    )
    full = tok.decode(greedy.ids)
    stop = full.split()[1]  # the second word of the greedy continuation
    [text] = adapter.generate_until(requests((context, {"until": [stop], "max_gen_toks": 12})))
    assert text == full.split(stop)[0] and text
    [whole] = adapter.generate_until(requests((context, {"until": ["\x00"], "max_gen_toks": 12})))
    assert whole == full


def test_eval_tasks_bad_input_is_one_line(tiny_run, cli, local_index, monkeypatch, tmp_path):
    run = str(tiny_run("cart"))
    assert_clean_error(cli("eval", run, "--tasks", "hellaswagg"), "--tasks hellaswagg", "unknown task")
    assert_clean_error(cli("eval", run, "--tasks", "nope.yaml"), "nope.yaml", "no such task file")
    assert_clean_error(cli("eval", run, "--tasks", str(tmp_path)), "no task files")
    assert_clean_error(cli("eval", run, "--tasks", ","), "--tasks")
    assert_clean_error(cli("eval", run, "--tasks", "a,a"), "a named more than once")
    assert_clean_error(cli("eval", run, "--tasks", TASKS, "--data", "x.txt"), "--data")
    assert_clean_error(cli("eval", run, "--limit", "3"), "--limit")
    assert_clean_error(cli("eval", run, "--tasks", TASKS, "--loops", "0"), "--loops")
    assert_clean_error(cli("eval", run, "--tasks", TASKS, "--loops", "two"), "--loops")
    assert_clean_error(cli("eval", run, "--tasks", TASKS, "--loops", "17"), "--loops 17")
    assert_clean_error(cli("eval", str(tiny_run("dense")), "--tasks", TASKS, "--loops", "2"), "has no loop")
    assert_clean_error(cli("eval", str(tmp_path / "nope"), "--tasks", TASKS), "no such run directory")
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.delitem(sys.modules, "cartspec.runtime.harness", raising=False)
    assert_clean_error(cli("eval", run, "--tasks", TASKS), "cartspec[eval]")
