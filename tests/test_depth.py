"""Sampled training depth and truncated backprop: the schedule's numbers, the draws, the generated
model's loop plan (against references written here), its cost against FlopCounterMode, and
training runs that resume exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from gen_helpers import BYTES_CART_SETS, build, compile_variant, randomize_
from torch.utils.flop_counter import FlopCounterMode

from cartspec.resolve import resolve
from cartspec.runtime.depth import DepthDraws
from cartspec.runtime.loop import Options, train
from cartspec.schedule import Schedule, schedule

CART_TINY = Path(__file__).resolve().parents[1] / "specs" / "tiny" / "cart_tiny.yaml"
HUGINN = ("train.depth.kind=poisson_lognormal", "train.depth.mean=4", "train.depth.backprop=2")


# ----------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    ("kind", "mean", "expected"),
    # Poisson(4) clipped to >= 1 moves P(0) = e^-4 onto 1; Poisson(LogNormal) + 1 has mean + 1
    [("uniform", 4.0, 4.5), ("poisson", 4.0, 4.0 + np.exp(-4)), ("poisson_lognormal", 4.0, 5.0)],
)
def test_the_depth_distributions_have_the_means_their_definitions_give(kind, mean, expected):
    s = Schedule(kind, mean, 0.5, 1, 8 if kind == "uniform" else 200, "step", None)
    pmf = s.pmf()
    assert sum(pmf.values()) == pytest.approx(1.0)
    assert s.mean_depth == pytest.approx(expected, rel=2e-3)


def test_draws_follow_the_distribution_and_depend_only_on_seed_and_key():
    s = Schedule("poisson_lognormal", 4.0, 0.5, 1, 16, "sequence", 2)
    draws = DepthDraws(s, seed=7)
    sample = [draws.draw(k) for k in range(4000)]
    assert np.mean(sample) == pytest.approx(s.mean_depth, rel=0.04)
    assert all(1 <= d <= 16 for d in sample)
    assert DepthDraws(s, seed=7).depths(3, np.arange(10, 14)) == sample[10:14]  # positions, not order
    assert DepthDraws(s, seed=8).depths(3, np.arange(10, 14)) != sample[10:14]


def test_per_sequence_depths_cost_the_batch_maximum():
    per_step = Schedule("poisson", 4.0, 0.5, 1, 12, "step", 2)
    per_sequence = Schedule("poisson", 4.0, 0.5, 1, 12, "sequence", 2)
    without, with_grad = per_step.expected_split(batch=8)
    assert without + with_grad == pytest.approx(per_step.mean_depth)
    assert sum(per_sequence.expected_split(batch=8)) > sum(per_step.expected_split(batch=8))
    assert per_sequence.expected_split(batch=1) == pytest.approx(per_step.expected_split(batch=8))


# ----------------------------------------------------------------------------- the generated loop


def small(tmp_path, label="cart", sets=()):
    _, module = compile_variant(tmp_path, label, sets)
    return randomize_(build(module), seed=3)


def tokens(seed: int, batch: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("label,sets", [("cart", ()), ("no_hc", ("blocks.core.state_mix=null",))])
def test_truncated_backprop_equals_detaching_the_early_loops(tmp_path, label, sets):
    """grad_loops=k gives the gradient of a full forward whose first loops' outputs are detached."""
    model = small(tmp_path, label, sets)
    x, y = tokens(1), tokens(2)
    loops, k = 5, 2
    _, loss = model(x, y, loops=loops, grad_loops=k)
    loss.backward()
    truncated = grads(model)

    calls = []

    def detach_early(_module, _inputs, out):  # the gate's output is the loop's new state
        calls.append(1)
        return out.detach() if len(calls) <= loops - k else out

    hook = model.gate.register_forward_hook(detach_early)
    _, reference_loss = model(x, y, loops=loops)
    reference_loss.backward()
    hook.remove()
    reference = grads(model)
    assert loss.item() == reference_loss.item()
    assert truncated.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(truncated[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)
    model(x, y, loops=loops)[1].backward()
    full = grads(model)
    assert not torch.allclose(full["core.attn.q_proj.weight"], truncated["core.attn.q_proj.weight"])


@pytest.mark.parametrize("grad_loops", [None, 2])
def test_per_sequence_depths_give_each_sequence_its_own_loop_count(tmp_path, grad_loops):
    """A batch with depths [2, 5, 3] computes for each sequence what it alone computes at its depth."""
    model = small(tmp_path).eval()
    x = tokens(4)
    depths = torch.tensor([2, 5, 3])
    with torch.no_grad():
        batched, _ = model(x, depths=depths, grad_loops=grad_loops)
        for i, d in enumerate(depths.tolist()):
            alone, _ = model(x[i : i + 1], loops=d)
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_sequence_under_per_sequence_truncation(tmp_path):
    model = small(tmp_path)
    x, y = tokens(5), tokens(6)
    _, loss = model(x, y, depths=torch.tensor([1, 6, 3]), grad_loops=2)
    loss.backward()
    assert model.core.attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_training_flops_at_a_drawn_depth_match_flop_counter_mode(depth):
    """params' schedule cost at one draw equals FlopCounterMode's count of forward + backward on
    the meta device (the head, which the report keeps apart, added), within 0.5%."""
    resolved = resolve(CART_TINY, list(HUGINN))
    cost, flops = resolved.params.depth, resolved.params.flops
    assert cost is not None
    without, with_grad = schedule(resolved.spec).split(depth)
    T = resolved.spec.model.max_seq_len
    accounted = cost.train_per_token(without, with_grad, T) * T + 3 * flops.head_per_sequence
    from cartspec.runtime.generated import compiled_module

    module, _ = compiled_module(resolved, Path(__import__("tempfile").mkdtemp()))
    with torch.device("meta"):
        model = module.Model()
        x = torch.zeros(1, T, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, x, loops=depth, grad_loops=2)
        loss.backward()
    counted = counter.get_total_flops()
    assert abs(counted - accounted) / accounted < 0.005, (counted, accounted)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(1)
    words = ["the", "loop", "runs", "again", "and", "state", "settles", "near", "its", "fixed", "point"]
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(200))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return path


def run(corpus: Path, out: Path, cache: Path, extra=(), **options) -> list[dict]:
    sets = [
        *BYTES_CART_SETS,
        f"train.data.source={corpus}",
        "train.steps=12",
        "train.micro_batch=2",
        "train.grad_accum=2",
        "train.log_interval=3",
        "train.eval.interval=6",
        "train.eval.batches=2",
        "train.checkpoint.interval=6",
        *HUGINN,
        *extra,
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            resolve(CART_TINY, sets),
            Options(out=out, device="cpu", cache_dir=cache, progress="off", **options),
        )
    finally:
        torch.set_num_threads(before)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("per", ["step", "sequence"])
def test_a_sampled_depth_run_records_its_depths_and_resumes_exactly(corpus, tmp_path, per):
    extra = [f"train.depth.per={per}"]
    whole = run(corpus, tmp_path / "whole", tmp_path / "cache", extra)
    run(corpus, tmp_path / "split", tmp_path / "cache", extra, until=6)
    split = run(corpus, tmp_path / "split", tmp_path / "cache", extra, resume="auto")
    measured = ("tokens_per_s", "mfu", "peak_memory_mb")  # of the machine, not of the run

    def computed(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in measured} for r in rows]

    assert computed(split) == computed(whole)
    depths = [d for r in whole for d in r.get("depths", [])]
    assert len(depths) == 12 and all(1 <= d <= 16 for d in depths)
    assert len(set(depths)) > 1  # drawn, not fixed


def test_eval_shows_the_depths_a_sampled_run_was_trained_at(corpus, tmp_path, cli):
    run(corpus, tmp_path / "run", tmp_path / "cache")
    rc, out, err = cli("eval", str(tmp_path / "run"), "--loops", "1,4,16", "--json")
    assert rc == 0, err
    shares = {r["loops"]: r["trained_share"] for r in json.loads(out)["rows"]}
    expected = schedule(resolve(CART_TINY, list(HUGINN)).spec).pmf()
    assert shares == pytest.approx({n: expected[n] for n in (1, 4, 16)})
    assert 0 < shares[4] < 1


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.depth.kind=uniform"], "train.depth.max: kind uniform needs max"),
        (
            ["train.depth.kind=poisson", "train.depth.max=40"],
            "train.depth.max: 40 loops exceed the loop table's 16",
        ),
        (
            ["train.depth.kind=poisson", "train.depth.min=9", "train.depth.max=8"],
            "train.depth.max: 8 is below min 9",
        ),
        (["train.depth.mean=3"], "train.depth.mean: kind fixed runs blocks.core.loops"),
        (
            ["train.depth.kind=poisson", "blocks.core.shared=false"],
            "an unshared core runs exactly its R blocks",
        ),
        (["train.depth.kind=gaussian"], "train.depth.kind: input should be"),
        (["train.depth.backprop=0"], "train.depth.backprop: input should be greater than or equal to 1"),
        (["train.depth.per=token"], "train.depth.per: input should be 'step' or 'sequence'"),
    ],
)
def test_a_bad_depth_recipe_is_one_located_line(cli, sets, message):
    rc, out, err = cli("validate", str(CART_TINY), *[f"--set={s}" for s in sets])
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_dense_model_has_no_depth_to_sample(cli):
    dense = CART_TINY.parent / "dense_tiny.yaml"
    rc, _, err = cli("validate", str(dense), "--set=train.depth.backprop=2")
    assert rc == 2 and "a model without a core has no loops to sample or truncate" in err
