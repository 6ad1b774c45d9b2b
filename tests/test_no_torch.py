"""The compiler's commands never import torch (docs/architecture.md): they must answer in well
under a second and work where torch is not installed. Nor does the run folder's layout module,
which sweeps and reports read runs through. Checked in a fresh interpreter, since this test
process has long since imported whatever other tests needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/cart_d1024.yaml"

# Run in order in one fresh interpreter; after each command, record the heavy modules loaded so far.
COMMANDS = [
    ["validate", SPEC, "specs/tiny/cart_tiny.yaml", "specs/dense_d1024.yaml"],
    ["params", SPEC],
    ["params", "--json", SPEC, "--set", "blocks.core.loops=8"],
    ["graph", SPEC],
    ["graph", "--format", "dot", SPEC],
    ["schema"],
    ["compile", "--check", SPEC, "specs/dense_d1024.yaml"],  # renders code; writes nothing
    ["graph", "--format", "json", SPEC],  # the one command that hands the graph to networkx
]
PROBE = """
import contextlib, io, json, sys
from cartspec.cli import app

loaded = {}
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        app(args, standalone_mode=False)
    loaded[" ".join(args)] = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "networkx"})
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def heavy_modules_after_each_command() -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(COMMANDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_validate_params_graph_schema_and_compile_never_import_torch(heavy_modules_after_each_command):
    importing = [cmd for cmd, mods in heavy_modules_after_each_command.items() if "torch" in mods]
    assert importing == [], f"first command that imported torch: {importing[0]}" if importing else ""


def test_validate_and_params_do_not_load_networkx(heavy_modules_after_each_command):
    """networkx costs about a third of a second on import; only ``graph --format json`` needs it."""
    commands = [" ".join(c) for c in COMMANDS if c[0] in ("validate", "params")]
    assert {cmd: heavy_modules_after_each_command[cmd] for cmd in commands} == dict.fromkeys(commands, [])


# Planning, listing, storing and reporting sweeps read specs and results only; running a sweep
# imports the runtime when a config actually trains, so its module imports without torch too.
TORCH_FREE_MODULES = [
    "cartspec.console",
    "cartspec.experiments.sweepfile",
    "cartspec.experiments.overrides",
    "cartspec.experiments.plan",
    "cartspec.experiments.run",
    "cartspec.experiments.store",
    "cartspec.experiments.metrics",
    "cartspec.experiments.parity",
    "cartspec.experiments.report",
]


def test_console_and_experiment_modules_import_without_torch():
    probe = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nprint('torch' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", probe, *TORCH_FREE_MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "False\n")


def test_the_run_folder_module_never_imports_torch(tmp_path):
    """Sweeps and reports read run folders (spec.yaml, metrics.jsonl, checkpoint names) without torch."""
    probe = (
        "import sys; from pathlib import Path; from cartspec.runtime import rundir; "
        "rundir.read_metrics(Path(sys.argv[1])); rundir.newest_step(Path(sys.argv[1])); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
