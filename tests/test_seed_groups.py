"""Seeds in a sweep's report: grouping, spreads, Welch intervals and the claims' verdicts."""

from __future__ import annotations

import json
import math
import re

import pytest
from matplotlib.image import imread

from cartspec.experiments import store
from cartspec.experiments.claims import evaluate, verdict
from cartspec.experiments.report import write_report
from cartspec.experiments.seeds import Group, decimals, groups, interval, label, mean_sd, stat


@pytest.mark.parametrize(
    ("run_id", "grid", "group"),
    [
        ("s2", {"train.seed": 2}, "base"),
        ("unfrozen_kv_s3", {"train.seed": 3}, "unfrozen_kv"),
        ("d128_r4_s42", {"model.d_model": 128, "blocks.core.loops": 4, "train.seed": 42}, "d128_r4"),
        ("p1_r4", {"train.seed": 1}, "p1_r4"),  # one seed, inherited: its id has no seed part
        ("r3", {"blocks.core.loops": 3}, "r3"),
    ],
)
def test_a_run_s_group_is_its_id_without_its_seed(run_id, grid, group):
    assert label(run_id, grid) == group


def test_welch_interval_matches_a_hand_computation():
    # diff -3, se sqrt(2/3), Welch df exactly 4, t(0.975, 4) = 2.776
    lo, hi = interval([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = 2.776 * math.sqrt(2 / 3)
    assert (lo, hi) == pytest.approx((-3 - half, -3 + half))
    lo, hi = interval([1.0, 2.0, 3.0])  # one sample: mean 2, se 1/sqrt(3), df 2
    assert (lo, hi) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert interval([1.0], [2.0, 3.0]) is None


@pytest.mark.parametrize(
    ("expect", "ci", "said"),
    [
        ("lower", (-0.3, -0.1), "holds"),
        ("lower", (0.1, 0.3), "does not hold"),
        ("lower", (-0.1, 0.3), "not resolved at this scale"),
        ("higher", (0.1, 0.3), "holds"),
        ("same", (-0.1, 0.3), "holds: no difference resolved"),
        ("same", (0.1, 0.3), "does not hold"),
        ("differs", (-0.3, -0.1), "holds"),
        ("differs", (-0.1, 0.1), "not resolved at this scale"),
        ("lower", None, "not resolved (fewer than 2 seeds)"),
    ],
)
def test_a_verdict_reads_only_the_interval(expect, ci, said):
    assert verdict(expect, ci) == said


def test_no_figure_is_more_precise_than_its_spread():
    assert decimals(0.023) == 2 and decimals(0.4) == 1 and decimals(3.0) == 0
    assert decimals(0.0123, scale=100) == 0  # 1.2 percentage points: whole percents
    assert mean_sd(stat([4.61, 4.64, 4.66])) == "4.64 ± 0.03"
    assert mean_sd(stat([4.6370])) == "4.6370"


def _row(
    run_id: str, seed: int, val_loss: float, *, looped: bool = True, ref: str | None = None, **kw
) -> store.Row:
    fields = dict(position=0, role="extra" if ref else "grid", ref=ref, change=None, spec="cart_tiny",
                  spec_path="spec.yaml", overrides="[]", grid=json.dumps({"train.seed": seed}),
                  fingerprint=run_id, looped=int(looped), loops=4 if looped else None, d_model=128,
                  stored=906_499 if looped else 1_623_936, effective=1_460_620 if looped else 1_623_936,
                  effective_paper=1, forward_flops=10**9, steps=500, status="done", val_loss=val_loss,
                  val_ppl=math.exp(val_loss), run_dir=f"runs/{run_id}")  # fmt: skip
    return store.Row(id=run_id, **{**fields, **kw})


BASE = [4.60, 4.62, 4.64]
SAMPLED = [4.63, 4.64, 4.66]
DENSE = [4.50, 4.51, 4.52]


@pytest.fixture
def seeded(tmp_path):
    """A results database with three seeds of a CART, of a sampled-depth variant and of a dense
    baseline, loop evaluations and metrics: what a multi-seed study leaves behind."""
    rows = [_row(f"s{i}", i, v, rho=0.90 + i / 100) for i, v in enumerate(BASE, 1)]
    rows += [_row(f"sampled_s{i}", i, v, ref="s1", rho=0.9) for i, v in enumerate(SAMPLED, 1)]
    rows += [_row(f"dense_s{i}", i, v, looped=False, ref="s1", role="parity") for i, v in enumerate(DENSE, 1)]
    claims = [
        {"claim": "dense wins", "paper": "1%", "variant": "dense", "base": "base", "measure": "val_loss",
         "expect": "lower"},
        {"claim": "flat", "paper": "", "variant": "sampled", "base": "base", "measure": "loop_range",
         "expect": "lower"},
    ]  # fmt: skip
    with store.connect(tmp_path, create=True) as con:
        store.set_meta(con, name="seeded", claims=json.dumps(claims))
        for r in rows:
            store.put(con, r)
            if r.looped:  # a U over loop counts for the fixed runs, nearly flat for the sampled ones
                depth = 0.01 if r.id.startswith("sampled") else 0.2
                evals = [(n, r.val_loss + depth * abs(math.log2(n / 4)), 0.0) for n in (1, 2, 4, 8)]
                store.put_loop_evals(con, r.id, [(n, loss, math.exp(loss)) for n, loss, _ in evals])
            metrics = [{"step": s, "loss": 6 - s / 100, "rho": 0.9} for s in (100, 200)]
            metrics += [{"step": 200, "val_loss": r.val_loss}]
            if r.id.startswith("sampled"):
                metrics[0]["depths"] = [3, 5]
            (tmp_path / r.run_dir).mkdir(parents=True)
            (tmp_path / r.run_dir / "metrics.jsonl").write_text(
                "".join(json.dumps(m) + "\n" for m in metrics)
            )
    return tmp_path


def test_seeds_become_one_row_with_mean_and_spread(seeded):
    text = write_report(seeded).read_text()
    section = text.split("## Seed groups", 1)[1].split("\n## ", 1)[0]
    assert "| base | 3 | 906.50K | 1.46M | 4.62 ± 0.02 |" in section
    assert "| dense | 3 |" in section and "| sampled | 3 |" in section


def test_claims_get_their_figure_and_verdict(seeded):
    text = write_report(seeded).read_text()
    section = text.split("## Claims", 1)[1].split("\n## ", 1)[0]
    dense = next(line for line in section.splitlines() if line.startswith("| dense wins"))
    lo, hi = interval(DENSE, BASE)
    assert f"{math.expm1(sum(DENSE) / 3 - sum(BASE) / 3):+.0%}" in dense
    assert hi < 0 and dense.endswith("| 3 vs 3 | holds |")
    flat = next(line for line in section.splitlines() if line.startswith("| flat"))
    assert flat.endswith("| holds |")  # 0.03 loss range against 0.6: flattened


def test_a_claim_about_groups_not_run_yet_says_so():
    outcome = evaluate({"variant": "x", "base": "y", "measure": "val_loss", "expect": "lower"}, {}, {})
    assert outcome.verdict == "not run yet"


def test_the_depth_plot_shows_fixed_against_sampled_with_bands(seeded):
    text = write_report(seeded).read_text()
    images = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert "depth.png" in images
    pixels = imread(seeded / "depth.png")
    assert pixels[..., :3].std() > 0.05


def test_groups_keep_the_order_of_their_first_run():
    rows = [_row("s1", 1, 4.6), _row("x_s1", 1, 4.7, ref="s1"), _row("s2", 2, 4.6)]
    found = groups(rows)
    assert [(g.label, g.seeds) for g in found] == [("base", 2), ("x", 1)]
    assert isinstance(found[0], Group)
