"""The run folder's files written and read back without torch: spec.yaml, env.json, metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cartspec.errors import SpecError, UserError
from cartspec.resolve import resolve
from cartspec.runtime import rundir

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"


def test_spec_yaml_reads_back_as_the_same_architecture(tmp_path):
    resolved = resolve(CART_TINY, ["blocks.core.loops=6"])
    rundir.write_spec(tmp_path, resolved)
    again = rundir.read_spec(tmp_path)
    assert again.spec == resolved.spec
    assert again.sha256 == resolved.sha256


def test_a_spec_yaml_that_fails_a_semantic_check_is_located(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rundir.write_spec(tmp_path, resolve(CART_TINY))
    path = tmp_path / rundir.SPEC
    path.write_text(path.read_text().replace("max_loops: 16", "max_loops: 2"))
    with pytest.raises(SpecError) as e:
        rundir.read_spec(tmp_path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "max_loops: 2" in text)
    assert any(str(p).startswith(f"spec.yaml:{line}:") for p in e.value.problems), e.value.problems


def test_model_py_of_another_architecture_is_refused(tmp_path):
    resolved = resolve(CART_TINY)
    (tmp_path / rundir.MODEL).write_text(f'ARCHITECTURE_SHA256 = "{"0" * 64}"\n')
    with pytest.raises(UserError, match="ARCHITECTURE_SHA256 differs"):
        rundir.check_model(tmp_path, resolved, None)
    source = f'ARCHITECTURE_SHA256 = "{resolved.sha256}"\n'.encode()
    (tmp_path / rundir.MODEL).write_bytes(source)
    assert rundir.check_model(tmp_path, resolved, rundir.sha256_bytes(source)) == source


def test_model_py_runs_only_as_the_checkpoint_recorded_it(tmp_path):
    """Appended code keeps ARCHITECTURE_SHA256 intact; the whole file's sha256 does not."""
    from cartspec.codegen.render import render

    resolved = resolve(CART_TINY)
    source = render(resolved).encode()
    (tmp_path / rundir.MODEL).write_bytes(source)
    recorded = rundir.model_sha256(tmp_path)
    assert rundir.check_model(tmp_path, resolved, recorded) == source
    assert rundir.check_model(tmp_path, resolved, None) == source  # an older checkpoint: the render
    (tmp_path / rundir.MODEL).write_bytes(source + b"\nimport os; os.system('echo pwned')\n")
    with pytest.raises(UserError, match="differs from the file its checkpoint was trained with"):
        rundir.check_model(tmp_path, resolved, recorded)
    with pytest.raises(UserError, match="differs from what cartspec generates"):
        rundir.check_model(tmp_path, resolved, None)


def test_the_run_folder_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    with (
        rundir.locked(tmp_path),
        pytest.raises(UserError, match=r"another training is writing to this run directory \(pid \d+ on "),
        rundir.locked(tmp_path),
    ):
        pass
    with rundir.locked(tmp_path):  # released by the first holder
        pass


def test_a_lock_held_by_a_killed_process_is_not_stale(tmp_path):
    """The kernel drops an flock with its holder: a run killed with SIGKILL blocks nothing."""
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cartspec.runtime import rundir; "
         "from pathlib import Path\nwith rundir.locked(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"pid {holder.pid}"), rundir.locked(tmp_path):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with rundir.locked(tmp_path):
        pass
    assert (tmp_path / rundir.LOCK).exists()  # the file stays; only a live lock on it counts


def test_metrics_never_write_bare_nan(tmp_path):
    metrics = rundir.Metrics(tmp_path, resume_step=None)
    metrics.write({"step": 1, "loss": 2.0, "grad_norm": float("inf"), "lr": float("nan")})
    metrics.close()
    assert json.loads((tmp_path / rundir.METRICS).read_text()) == {
        "step": 1, "loss": 2.0, "grad_norm": None, "lr": None
    }  # fmt: skip


def test_env_json_holds_versions_the_machine_and_the_spec_file(tmp_path):
    rundir.write_env(tmp_path, CART_TINY, {"torch": "x.y", "device": "cpu", "gpu": None})
    env = rundir.read_env(tmp_path)
    assert env["torch"] == "x.y" and env["device"] == "cpu" and env["gpu"] is None
    assert env["spec_file"] == str(CART_TINY)
    assert {"cartspec", "python", "platform"} <= env.keys()


def test_metrics_resume_drops_lines_past_the_checkpoint_and_torn_lines(tmp_path):
    metrics = rundir.Metrics(tmp_path, resume_step=None)
    for step in (1, 2, 3, 4):
        metrics.write({"step": step, "loss": 1.0 / step})
    metrics.close()
    with open(tmp_path / rundir.METRICS, "a") as f:
        f.write('{"step": 5, "lo')  # a write cut short
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3, 4]

    metrics = rundir.Metrics(tmp_path, resume_step=2)
    metrics.write({"step": 3, "loss": 0.25})
    metrics.close()
    lines = (tmp_path / rundir.METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_metrics_off_rank_zero_write_nothing(tmp_path):
    metrics = rundir.Metrics(tmp_path, resume_step=None, enabled=False)
    metrics.write({"step": 1})
    metrics.close()
    assert not (tmp_path / rundir.METRICS).exists()
    assert rundir.read_metrics(tmp_path) == []
