"""The layout of a run folder, owned in one place (no torch: sweeps and reports read it too).

A run folder holds everything needed to read, resume, evaluate or sample a run later::

    spec.yaml        the resolved spec that was trained, every default written out
    model.py         the generated code that was trained
    tokenizer.json   the tokenizer (absent for .bin data without one)
    env.json         versions and device
    metrics.jsonl    one JSON object per logged step
    checkpoints/step_NNNNNNN/   model, optimizer and RNG safetensors plus state.json
"""

from __future__ import annotations

import json
import math
import platform
import re
from pathlib import Path
from typing import IO, Any

import yaml

from cartspec import __version__
from cartspec.errors import UserError
from cartspec.loader import read_yaml
from cartspec.resolve import Resolved, resolve_data, spec_dict
from cartspec.runtime.atomic import write_atomic

SPEC = "spec.yaml"
MODEL = "model.py"
TOKENIZER = "tokenizer.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"

_STEP_DIR = re.compile(r"^step_(\d{7,})$")
_MODEL_SHA256 = re.compile(r'^ARCHITECTURE_SHA256 = "([0-9a-f]{64})"$', re.MULTILINE)


def run_dir_for(resolved: Resolved, out: Path | None) -> Path:
    """Where a run goes: ``out`` when given, else ``runs/<spec name>``."""
    return out if out is not None else Path("runs") / resolved.spec.name


# ----------------------------------------------------------------------------- spec.yaml, model.py


def write_spec(run_dir: Path, resolved: Resolved) -> None:
    """The resolved spec, so the run reads back without the files it was extended from."""
    write_atomic(run_dir / SPEC, yaml.safe_dump(spec_dict(resolved.spec), sort_keys=False))


def read_spec(run_dir: Path) -> Resolved:
    """The run's spec through every check a spec file passes: a hand-edited ``spec.yaml`` that no
    longer holds together is refused with its problems at ``spec.yaml:line:col``."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    path = run_dir / SPEC
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no {SPEC})")
    loaded = read_yaml(path)
    return resolve_data(loaded.data, path, loaded=loaded)


def check_model(run_dir: Path, resolved: Resolved) -> Path:
    """The run's ``model.py``, once its ``ARCHITECTURE_SHA256`` is the spec's: weights are loaded
    only into the architecture they were trained as. Read as text, so a mismatched file never runs."""
    path = run_dir / MODEL
    if not path.is_file():
        raise UserError(f"{run_dir}: no {MODEL}, the generated code the run was trained with")
    found = _MODEL_SHA256.search(path.read_text(encoding="utf-8", errors="replace"))
    if found is None or found.group(1) != resolved.sha256:
        raise UserError(
            f"{path}: ARCHITECTURE_SHA256 differs from the architecture in {SPEC}; refusing to load"
        )
    return path


# ----------------------------------------------------------------------------- env.json


def write_env(run_dir: Path, spec_file: Path, machine: dict[str, Any]) -> None:
    """Versions and where the spec came from; ``machine`` adds torch's version and the device,
    which only the caller can know without this module importing torch."""
    env = {
        "cartspec": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **machine,
        "spec_file": str(spec_file),
    }
    write_atomic(run_dir / ENV, json.dumps(env, indent=2))


def read_env(run_dir: Path) -> dict[str, Any]:
    """``env.json`` as written by :func:`write_env`; empty when the run has none."""
    path = run_dir / ENV
    return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------- metrics.jsonl


class Metrics:
    """Append-only ``metrics.jsonl``; on resume, lines past the checkpoint's step are dropped, so
    the steps that are trained again are not logged twice."""

    def __init__(self, run_dir: Path, resume_step: int | None, enabled: bool = True):
        self.file: IO[str] | None = None
        if not enabled:  # not rank 0
            return
        path = run_dir / METRICS
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if _line_step(line) <= resume_step]
            write_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, oldest first (a torn line is skipped)."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def _line_step(line: str) -> float:
    """The step of a metrics line; a blank or torn one (a write cut by power loss) sorts last."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    """``step_0000500``: seven digits at least, so names sort as their steps do."""
    return f"step_{step:07d}"


def checkpoint_step(path: Path) -> int | None:
    """The step of a finished checkpoint folder's name; None for anything else (a temporary
    ``.step_*`` folder, a stray file)."""
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (temporary folders are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def newest_step(run_dir: Path) -> int:
    """The step of the newest finished checkpoint, 0 when there is none."""
    found = list_checkpoints(run_dir)
    return checkpoint_step(found[-1]) if found else 0
