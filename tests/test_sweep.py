"""`cartspec sweep`: configs from a grid and extras, trained one after another, resumably.

The runs are real (d=32, raw bytes, 10 steps each); an interruption is a KeyboardInterrupt raised
from inside the third config's training, after its first checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sqlite3

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sweep_helpers import TINY_SPEC, one_thread, write_mini_sweep

import cartspec.runtime.loop as runtime_loop
from cartspec.errors import SpecError, UserError
from cartspec.experiments import store
from cartspec.experiments.overrides import grid_id, yaml_value
from cartspec.experiments.plan import plan_sweep
from cartspec.experiments.run import fingerprint, register, run_sweep
from cartspec.resolve import resolve

IDS = ["r2", "r3", "dense_stored_r3", "no_hc"]


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CARTSPEC_CACHE", str(tmp_path_factory.getbasetemp() / "cartspec_cache"))


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


def statuses(out) -> dict[str, str]:
    with sqlite3.connect(out / "results.db") as con:
        return dict(con.execute("SELECT id, status FROM runs ORDER BY position"))


def snapshot(folder) -> dict[str, int]:
    """Every file under a run folder with its modification time in nanoseconds."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def metric_lines(run) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


# ----------------------------------------------------------------------------- planning


def test_grid_ids_name_each_value_by_its_key():
    values = {"model.d_model": 128, "blocks.prelude.layers": 2, "blocks.core.loops": 4, "train.seed": 42}
    assert grid_id(values) == "d128_p2_r4_s42"
    assert grid_id({"train.optimizer.lr": 3.0e-4, "blocks.core.shared": False}) == "lr0p0003_sharedfalse"
    assert grid_id({}) == "base"


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6))
def test_a_value_written_for_set_reads_back_as_the_same_value(value):
    assert yaml.safe_load(yaml_value(value)) == value


def test_dry_run_lists_every_config_with_its_counts_and_trains_nothing(cli, tmp_path):
    path, out = write_mini_sweep(tmp_path), tmp_path / "out"
    rc, stdout, stderr = cli("sweep", str(path), "--out", str(out), "--dry-run")
    assert (rc, stderr) == (0, "")
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[2:-1]}
    assert list(rows) == IDS
    assert [rows[i][1] for i in IDS] == ["grid", "grid", "parity", "extra"]
    assert all(row[-1] == "new" for row in rows.values())
    assert stdout.splitlines()[-1].startswith("total: 4 configs, 5.12K training tokens")
    assert not out.exists()


def test_configs_apply_set_then_grid_then_the_entrys_own_set(tmp_path):
    plan = plan_sweep(write_mini_sweep(tmp_path), tmp_path / "out")
    by_id = {c.id: c for c in plan.configs}
    r3, no_hc, dense = by_id["r3"], by_id["no_hc"], by_id["dense_stored_r3"]
    assert r3.resolved.spec.blocks.core.loops == 3 and r3.resolved.spec.model.d_model == 32
    assert no_hc.overrides == [*r3.overrides, "blocks.core.state_mix=null"]
    assert no_hc.resolved.spec.blocks.core.state_mix is None and no_hc.ref == "r3"
    assert no_hc.change == "blocks.core.state_mix=null"
    # the stored-parity baseline stores no more than the config it is the baseline of
    assert dense.ref == "r3" and dense.report.stored <= r3.report.stored
    assert dense.resolved.spec.train == r3.resolved.spec.train


def test_printed_commands_rebuild_exactly_the_planned_configs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, out = write_mini_sweep(tmp_path), tmp_path / "out"
    rc, stdout, stderr = cli("sweep", str(path), "--out", str(out), "--print-commands")
    assert rc == 0
    assert "wrote" in stderr and (out / "specs" / "dense_stored_r3.yaml").is_file()
    plan = {c.id: c for c in plan_sweep(path, out).configs}
    lines = stdout.splitlines()
    assert len(lines) == 4
    for config_id, line in zip(IDS, lines, strict=True):
        args = shlex.split(line)
        assert args[:2] == ["cartspec", "train"]
        assert args[-4:] == ["--out", f"out/runs/{config_id}", "--resume", "auto"]
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        assert fingerprint(resolve(args[2], sets)) == fingerprint(plan[config_id].resolved)
    assert not (out / "results.db").exists()


# ----------------------------------------------------------------------------- running


def test_an_interrupted_sweep_resumes_without_redoing_finished_configs(cli, tmp_path, monkeypatch):
    path, out = write_mini_sweep(tmp_path), tmp_path / "out"
    real_train = runtime_loop.train
    calls: list[str] = []

    def interrupted_in_the_third_config(resolved, options):
        calls.append(options.out.name)
        if len(calls) == 3:  # train to the first checkpoint (step 5 of 10), then "Ctrl-C"
            real_train(resolved, dataclasses.replace(options, until=5))
            raise KeyboardInterrupt
        return real_train(resolved, options)

    monkeypatch.setattr(runtime_loop, "train", interrupted_in_the_third_config)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan_sweep(path, out), device="cpu", echo=lambda line: None)
    assert calls == IDS[:3]
    assert statuses(out) == {"r2": "done", "r3": "done", "dense_stored_r3": "pending", "no_hc": "pending"}
    runs = out / "runs"
    assert [p.name for p in (runs / "dense_stored_r3" / "checkpoints").iterdir()] == ["step_0000005"]
    finished = {i: snapshot(runs / i) for i in ("r2", "r3")}
    before = metric_lines(runs / "dense_stored_r3")
    assert json.loads(before[-1])["step"] == 5

    def counting(resolved, options):
        calls.append(options.out.name)
        return real_train(resolved, options)

    monkeypatch.setattr(runtime_loop, "train", counting)
    rc, stdout, stderr = cli("sweep", str(path), "--out", str(out), "--device", "cpu")
    assert (rc, stderr) == (0, "")
    assert calls[3:] == ["dense_stored_r3", "no_hc"]  # the finished ones were not trained again
    assert "[1/4] r2  done before; skipped" in stdout
    assert "[3/4] dense_stored_r3  training (resuming from step 5)" in stdout
    assert statuses(out) == dict.fromkeys(IDS, "done")
    assert {i: snapshot(runs / i) for i in ("r2", "r3")} == finished  # not one file rewritten
    after = metric_lines(runs / "dense_stored_r3")
    assert after[:5] == before[:5]  # steps 1-5 kept from before the interruption
    assert [json.loads(line)["step"] for line in after] == list(range(1, 11))

    with sqlite3.connect(out / "results.db") as con:
        con.row_factory = sqlite3.Row
        rows = {r["id"]: r for r in con.execute("SELECT * FROM runs")}
        evals = [tuple(r) for r in con.execute("SELECT run_id, loops FROM loop_evals ORDER BY run_id, loops")]
    for config_id in IDS:  # final values come from the run's own metrics
        last = [json.loads(line) for line in metric_lines(runs / config_id)][-1]
        assert rows[config_id]["val_loss"] == pytest.approx(last["val_loss"])
        assert rows[config_id]["train_loss"] == pytest.approx(last["loss"])
        assert rows[config_id]["error"] is None
    assert rows["r3"]["rho"] is not None and rows["dense_stored_r3"]["rho"] is None
    assert json.loads(rows["no_hc"]["overrides"])[-1] == "blocks.core.state_mix=null"
    assert evals == [(i, n) for i in ("no_hc", "r2", "r3") for n in (1, 2, 4)]  # looped runs only

    calls.clear()
    rc, stdout, _ = cli("sweep", str(path), "--out", str(out), "--device", "cpu")
    assert rc == 0 and calls == [] and stdout.count("done before; skipped") == 4


def test_a_config_whose_spec_changed_after_it_ran_is_refused(tmp_path):
    path, out = write_mini_sweep(tmp_path), tmp_path / "out"
    plan = plan_sweep(path, out)
    out.mkdir()
    with store.connect(out, create=True) as con:
        register(con, plan)
        store.update(con, "r2", status="done")
    path.write_text(path.read_text().replace("train.steps: 10", "train.steps: 12"))
    with store.connect(out) as con, pytest.raises(UserError, match="config r2 is not the one"):
        register(con, plan_sweep(path, out))


# ----------------------------------------------------------------------------- mistakes


def test_sweep_file_problems_are_located_in_the_sweep_file(cli, write_spec):
    write_spec(
        """
        base: specs/cart_tiny.yaml
        grids: {}
        """,
        "sweep.yaml",
    )
    rc, _, stderr = cli("sweep", "sweep.yaml", "--dry-run")
    assert rc == 2
    assert stderr.splitlines() == ["sweep.yaml:2:1: grids: unknown key 'grids' (did you mean 'grid'?)"]


def test_a_missing_base_spec_is_located_at_base(cli, write_spec):
    write_spec("base: specs/cart_tiny.yaml\n", "sweep.yaml")
    rc, _, stderr = cli("sweep", "sweep.yaml", "--dry-run")
    assert (rc, stderr) == (2, "sweep.yaml:1:1: base: no such spec file: specs/cart_tiny.yaml\n")


def test_a_bad_grid_value_is_located_at_the_value_and_names_the_configs(write_spec, spec_dir):
    (spec_dir / "tiny.yaml").write_text(TINY_SPEC.read_text())
    write_spec(
        """
        base: tiny.yaml
        grid:
          model.d_model: [64, 100]
          blocks.core.loops: [2, 4]
        extra:
          - {name: ablation, of: d64_r9}
        """,
        "sweep.yaml",
    )
    with pytest.raises(SpecError) as e:
        plan_sweep("sweep.yaml")
    assert [str(p) for p in e.value.problems] == [
        "sweep.yaml:3:23: model.d_model: 100 is not divisible by head_dim 32 (config d100_r2 and 1 more)",
        "sweep.yaml:6:22: extra.0.of: no config 'd64_r9' before this entry (have: base, d64_r2, d64_r4)",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{set: {train.steps: 5}}", "extra.0: an extra without spec: needs a name:"),
        ("{name: base}", "extra.0.name: 'base' is reserved for the base spec"),
        (
            "{parity: {match: storage}}",
            "extra.0.parity.match: input should be 'stored', 'effective' or 'flops'",
        ),
        (
            "{name: x, set: [train.steps]}",
            "extra.0.set: item 0: expected 'dotted.path=value', got 'train.steps'",
        ),
    ],
)
def test_bad_extras_are_one_located_line(cli, write_spec, spec_dir, entry, message):
    write_spec(f"base: ../tiny.yaml\nextra:\n  - {entry}\n", "s/sweep.yaml")
    (spec_dir / "tiny.yaml").write_text(
        "name: t\nmodel: {vocab_size: 260, d_model: 32, head_dim: 16, max_seq_len: 32}\n"
        "blocks: {stack: {layers: 1, attention: {kind: mha}}}\n"
    )
    rc, _, stderr = cli("sweep", "s/sweep.yaml", "--dry-run")
    assert rc == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith("s/sweep.yaml:3:") and message in stderr


def test_eval_loops_must_be_a_flag_or_loop_counts(cli, write_spec):
    write_spec("base: tiny.yaml\neval_loops: [0, 2]\n", "sweep.yaml")
    rc, _, stderr = cli("sweep", "sweep.yaml", "--dry-run")
    assert (rc, stderr) == (
        2,
        "sweep.yaml:2:1: eval_loops: expected true, false or a list of loop counts >= 1, got [0, 2]\n",
    )


def test_jobs_train_configs_side_by_side_to_the_values_one_at_a_time_gives(cli, tmp_path):
    """`--jobs 2`: two configs train at once in worker processes, the store gets every row and its
    loop evaluations, and the losses are those of the one-at-a-time sweep."""
    path = write_mini_sweep(tmp_path)
    rc, stdout, stderr = cli(
        "sweep", str(path), "--out", str(tmp_path / "two"), "--device", "cpu", "--jobs", "2"
    )
    assert (rc, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[1:3] == [
        "[1/4] r2  training (job 1 of 2)",
        "[2/4] r3  training (job 2 of 2)",
    ]  # side by side
    assert lines[-1] == f"4 done, 0 failed; results in {tmp_path / 'two' / 'results.db'}"
    run_sweep(plan_sweep(path, tmp_path / "one"), device="cpu", echo=lambda line: None)

    def results(out):
        with sqlite3.connect(out / "results.db") as con:
            runs = dict(con.execute("SELECT id, val_loss FROM runs WHERE status = 'done'"))
            evals = list(con.execute("SELECT run_id, loops, val_loss FROM loop_evals ORDER BY run_id, loops"))
        return runs, evals

    (two_runs, two_evals), (one_runs, one_evals) = results(tmp_path / "two"), results(tmp_path / "one")
    assert list(two_runs) == IDS and two_runs == pytest.approx(one_runs, abs=1e-6)
    assert [e[:2] for e in two_evals] == [e[:2] for e in one_evals] != []
    assert [e[2] for e in two_evals] == pytest.approx([e[2] for e in one_evals], abs=1e-6)


def test_a_failing_job_is_recorded_and_the_others_finish(cli, tmp_path):
    path = write_mini_sweep(tmp_path)
    text = path.read_text().replace("{name: no_hc, of: r3, set: {blocks.core.state_mix: null}}",
                                    "{name: no_hc, of: r3, set: {train.data.source: /nowhere.txt}}")  # fmt: skip
    path.write_text(text)
    rc, stdout, _ = cli("sweep", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", "--jobs", "2")
    assert rc == 1
    assert "[4/4] no_hc  failed: " in stdout and "/nowhere.txt" in stdout
    assert statuses(tmp_path / "out") == {
        "r2": "done",
        "r3": "done",
        "dense_stored_r3": "done",
        "no_hc": "failed",
    }


def test_jobs_and_nproc_together_are_one_line(cli, tmp_path):
    path = write_mini_sweep(tmp_path)
    rc, _, stderr = cli("sweep", str(path), "--out", str(tmp_path / "out"), "--jobs", "2", "--nproc", "2")
    assert (rc, stderr) == (
        2,
        "error: --nproc and --jobs: pick one (processes for one config, or configs at once)\n",
    )
