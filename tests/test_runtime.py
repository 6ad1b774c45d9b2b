"""The runtime's recipe (schedule, weight decay) and what a trained run does: it learns the default
corpus, evaluates at several loop counts and samples text."""

from __future__ import annotations

import json
import math
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from cartspec.resolve import resolve
from cartspec.runtime.data import prepare_data
from cartspec.runtime.generated import compiled_module
from cartspec.runtime.loop import Options, Summary, train
from cartspec.runtime.optim import build_optimizer, lr_at, parameter_groups

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
DENSE_TINY = ROOT / "specs" / "tiny" / "dense_tiny.yaml"

# The shipped tiny recipe (300 steps of 16 x 128 tokens) takes minutes on a CPU; this budget keeps
# the models, the optimizer and the schedule's shape and trains on a quarter of the tokens.
LEARN = [
    "train.steps=150",
    "train.seq_len=64",
    "train.eval.interval=1000",  # evaluate and save once, at the last step
    "train.checkpoint.interval=1000",
    "train.log_interval=10",
]
# Measured with LEARN on a 2-core CPU (one thread; CART ~50 s, dense ~40 s of CPU time), King James
# corpus, BPE-1024 (the same figures with two threads):
#   unigram entropy of the training split   H = 5.742 nats
#   cart_tiny  final val loss                 = 5.263  (H - 0.48)
#   dense_tiny final val loss                 = 5.436  (H - 0.31)
# A model that had learned nothing beyond token frequencies would sit at H or above (validation is
# the last chapters, so its unigram cross-entropy there is higher still). The margin is two thirds
# of dense_tiny's measured gap, leaving room for float differences across machines and versions.
MARGIN = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy shared 2-core machine two spinning threads can be many times
    slower, and the figures above were measured this way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval and sample find the run's token cache through $CARTSPEC_CACHE."""
    monkeypatch.setenv("CARTSPEC_CACHE", str(cache))


def unigram_entropy(spec_path: Path, cache: Path) -> float:
    """Entropy (nats) of the token frequencies of the training split, with the run's tokenizer:
    the loss of the best model that ignores context."""
    spec = resolve(spec_path, LEARN).spec
    _, splits = prepare_data(spec, cache)
    counts = np.bincount(np.asarray(splits.train), minlength=spec.model.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def learn(spec_path: Path, out: Path, cache: Path) -> Summary:
    return train(resolve(spec_path, LEARN), Options(out=out, device="cpu", cache_dir=cache, progress="off"))


@pytest.fixture(scope="module")
def cart_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, Summary]:
    out = tmp_path_factory.mktemp("cart") / "run"
    return out, learn(CART_TINY, out, cache)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, Summary]:
    out = tmp_path_factory.mktemp("dense") / "run"
    return out, learn(DENSE_TINY, out, cache)


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("which", ["cart_run", "dense_run"])
def test_tiny_specs_learn_the_default_corpus_beyond_unigram_statistics(which, request, cache):
    run, summary = request.getfixturevalue(which)
    entropy = unigram_entropy(CART_TINY, cache)
    print(f"{which}: unigram entropy {entropy:.4f} nats, val loss {summary.val_loss:.4f}")
    assert 5.0 < entropy < 7.0  # BPE-1024 on the King James text; ln(1024) = 6.93
    assert summary.val_loss < entropy - MARGIN
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] > rows[-1]["loss"]
    assert rows[-1]["step"] == 150 and rows[-1]["val_loss"] == summary.val_loss


def test_the_loop_sets_the_scheduled_lr_at_every_logged_step(cart_run):
    run, _ = cart_run
    t = resolve(CART_TINY, LEARN).spec.train
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert row["lr"] == lr_at(row["step"] - 1, t)


# ----------------------------------------------------------------------------- eval and sample


def test_eval_prints_one_row_per_loop_count(cli, cart_run):
    run, summary = cart_run
    rc, out, err = cli("eval", str(run), "--loops", "1,2,4,6")
    assert rc == 0, err
    counts = [m.group(1) for m in re.finditer(r"^\W*(\d+)( \*)?\s*[│|]", out, re.MULTILINE)]
    assert counts == ["1", "2", "4", "6"], out
    assert re.search(r"^\W*4 \*", out, re.MULTILINE), "the trained R is marked"

    rc, out, err = cli("eval", str(run), "--loops", "1,2,4,6", "--json")
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert [r["loops"] for r in rows] == [1, 2, 4, 6]
    assert all(
        math.isfinite(r["val_loss"]) and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in rows
    )
    at_trained_r = next(r for r in rows if r["loops"] == 4)
    assert at_trained_r["val_loss"] == pytest.approx(summary.val_loss, rel=1e-5)  # same batches, same weights


def test_eval_of_a_dense_run_has_one_row_without_a_loop_count(cli, dense_run):
    run, summary = dense_run
    rc, out, err = cli("eval", str(run), "--json")
    assert rc == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["loops"] is None and row["val_loss"] == pytest.approx(summary.val_loss, rel=1e-5)
    rc, out, err = cli("eval", str(run))
    assert rc == 0, err
    assert "(no loop)" in out and re.search(r"^\W*–\s*[│|]", out, re.MULTILINE), out


def test_eval_defaults_to_the_trained_loop_count(cli, cart_run):
    run, _ = cart_run
    rc, out, err = cli("eval", str(run), "--json")
    assert rc == 0, err
    assert [r["loops"] for r in json.loads(out)["rows"]] == [4]


def test_eval_beyond_the_loop_table_is_a_clean_error(cli, cart_run):
    run, _ = cart_run
    rc, out, err = cli("eval", str(run), "--loops", "2,99")
    assert rc == 2
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [err.strip()]
    assert "--loops 99" in err and "1..16" in err


def test_eval_with_loops_on_a_dense_run_is_a_clean_error(cli, dense_run):
    run, _ = dense_run
    rc, out, err = cli("eval", str(run), "--loops", "2")
    assert rc == 2
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == ["error: --loops: dense_tiny has no loop to vary"]
    rc, out, err = cli("eval", str(run), "--json")  # without --loops it evaluates the one model
    assert rc == 0, err
    assert len(json.loads(out)["rows"]) == 1


def test_sample_continues_the_prompt_in_text(cli, cart_run):
    run, _ = cart_run
    args = ("sample", str(run), "--prompt", "In the beginning", "--max-new-tokens", "20")
    rc, out, err = cli(*args)
    assert rc == 0, err
    assert out.startswith("In the beginning")
    assert len(out.rstrip("\n")) > len("In the beginning")
    assert "\ufffd" not in out  # BPE pieces decode to whole characters
    assert cli(*args)[1] == out  # the default seed makes it repeatable


def test_sample_with_the_cache_writes_what_sampling_without_it_writes(cli, cart_run):
    run, _ = cart_run
    base = ("sample", str(run), "--prompt", "And God said", "--max-new-tokens", "24")
    for extra in [(), ("--loops", "2"), ("--temperature", "0"), ("--top-p", "0.9", "--top-k", "20")]:
        rc, cached, err = cli(*base, *extra)
        assert rc == 0, err
        assert cli(*base, *extra, "--no-cache")[1] == cached, extra


def test_sample_continues_every_line_of_a_prompt_file(cli, cart_run, tmp_path):
    run, _ = cart_run
    (tmp_path / "prompts.txt").write_text("In the beginning\n\nAnd the earth\n")
    rc, out, err = cli(
        "sample", str(run), "--prompt-file", str(tmp_path / "prompts.txt"), "--max-new-tokens", "8"
    )
    assert rc == 0, err
    first, second = out.rstrip("\n").split("\n\n")
    assert first.startswith("In the beginning") and second.startswith("And the earth")


def test_sample_can_exit_the_loop_early_and_says_how_many_loops_a_token_used(cli, cart_run):
    run, _ = cart_run
    args = ("sample", str(run), "--prompt", "In", "--max-new-tokens", "8", "--exit-threshold")
    rc, _, err = cli(*args, "1e-9")  # never settles: every token runs all R = 4 loops
    assert rc == 0, err
    assert err == "mean loops per token: 4.00\n"
    rc, _, err = cli(*args, "1")  # a loop that moves the state by less than its norm ends it
    assert rc == 0, err
    assert 1 <= float(err.split(": ")[1]) < 4


# ----------------------------------------------------------------------------- the schedule


def schedule(*sets: str):
    return resolve(CART_TINY, list(sets)).spec.train


def test_lr_warms_up_linearly_then_follows_a_cosine_to_min_lr_at_the_last_step():
    t = schedule(
        "train.steps=101", "train.schedule.warmup=10", "train.optimizer.lr=1e-3", "train.schedule.min_lr=1e-4"
    )
    lrs = [lr_at(s, t) for s in range(101)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1e-3)  # the peak, where the cosine starts
    assert lrs[55] == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the decay
    assert lrs[100] == pytest.approx(1e-4)  # the floor exactly at the last step ...
    assert lrs[99] > 1e-4  # ... and not before
    assert all(a >= b for a, b in pairwise(lrs[10:]))
    for s in (20, 37, 80):
        assert lrs[s] == pytest.approx(1e-4 + 0.45e-3 * (1 + math.cos(math.pi * (s - 10) / 90)))


def test_constant_schedule_holds_the_peak_after_warmup():
    t = schedule(
        "train.steps=50", "train.schedule.kind=constant", "train.schedule.warmup=5", "train.optimizer.lr=2e-3"
    )
    assert [lr_at(s, t) for s in range(5)] == pytest.approx([4e-4, 8e-4, 1.2e-3, 1.6e-3, 2e-3])
    assert {lr_at(s, t) for s in range(5, 50)} == {2e-3}


def test_without_warmup_the_first_step_is_at_the_peak():
    t = schedule(
        "train.steps=10", "train.schedule.warmup=0", "train.optimizer.lr=1e-3", "train.schedule.min_lr=0"
    )
    assert lr_at(0, t) == 1e-3
    assert lr_at(9, t) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- weight decay

SMALL = [
    "model.d_model=32",
    "model.head_dim=16",
    "model.vocab_size=300",
    "model.max_seq_len=32",
    "train.seq_len=32",
]


@pytest.fixture(scope="module")
def small_cart(tmp_path_factory: pytest.TempPathFactory):
    resolved = resolve(CART_TINY, SMALL)
    module, _ = compiled_module(resolved, tmp_path_factory.mktemp("gen"), "model.py")
    return resolved, module


def fresh(small_cart) -> torch.nn.Module:
    _, module = small_cart
    torch.manual_seed(0)
    return module.Model()


def test_decay_matrices_exempts_norms_gate_and_mix_weights(small_cart):
    model = fresh(small_cart)
    decayed, exempt = parameter_groups(model, "matrices", 0.1)
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.1, 0.0)
    name = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {name[id(p)] for p in exempt["params"]}
    assert {"gate.a", "state_mix.weights", "norm.weight", "core.attn_norm.weight"} <= exempt_names
    assert all(n.endswith("norm.weight") or n in ("gate.a", "state_mix.weights") for n in exempt_names)
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in exempt["params"])
    ids = [id(p) for g in (decayed, exempt) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(name)  # every parameter once, the tied embedding too
    assert any(p is model.embedding.weight for p in decayed["params"])


def test_decay_all_decays_every_parameter(small_cart):
    model = fresh(small_cart)
    (group,) = parameter_groups(model, "all", 0.1)
    assert group["weight_decay"] == 0.1
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("decay", ["matrices", "all"])
def test_the_optimizer_shrinks_exactly_the_decayed_parameters(small_cart, decay):
    """With zero gradients AdamW's first step is pure decay: p <- p * (1 - lr * wd)."""
    resolved, _ = small_cart
    t = resolve(CART_TINY, [*SMALL, f"train.optimizer.decay={decay}", "train.optimizer.lr=0.01"]).spec.train
    model = fresh(small_cart)
    optimizer = build_optimizer(model, t, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        decays = decay == "all" or p.ndim >= 2
        expected = before[n] * (1 - 0.01 * 0.1) if decays else before[n]
        assert torch.allclose(p, expected, rtol=0, atol=1e-9), n


# ----------------------------------------------------------------------------- gradient accumulation


def test_gradient_accumulation_averages_over_the_global_batch(tmp_path):
    """4 sequences in one micro-batch, or 2 x 2 accumulated: the same step, so the same loss and
    the same gradient norm (summing the micro-batches' gradients would double it, which AdamW's
    scale-free update alone would hardly show)."""
    from gen_helpers import BYTES_CART_SETS

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Verse {i}: and it was so, {i % 7} times." for i in range(300)))
    base = [
        *BYTES_CART_SETS,
        f"train.data.source={corpus}",
        "train.steps=1",
        "train.grad_clip=null",
        "train.eval.batches=2",
        "train.log_interval=1",
    ]
    records = []
    for i, sets in enumerate((["train.micro_batch=4"], ["train.micro_batch=2", "train.grad_accum=2"])):
        out = tmp_path / f"run{i}"
        train(
            resolve(CART_TINY, [*base, *sets]),
            Options(out=out, device="cpu", cache_dir=tmp_path / "cache", progress="off"),
        )
        records.append(next(r for r in map(json.loads, (out / "metrics.jsonl").open()) if "loss" in r))
    one, accumulated = records
    assert accumulated["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert accumulated["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
