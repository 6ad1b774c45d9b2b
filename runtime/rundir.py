"""The layout of a run folder, owned in one place (no torch: sweeps and reports read it too).

A run folder holds everything needed to read, resume, evaluate or sample a run later::

    spec.yaml        the resolved spec that was trained
    model.py         the generated code that was trained
    tokenizer.json   the tokenizer (absent for .bin data without one)
    env.json         versions and device
    metrics.jsonl    one JSON object per logged step
    checkpoints/step_NNNNNNN/   model, optimizer and RNG safetensors plus state.json
"""

from __future__ import annotations

import re
from pathlib import Path

SPEC = "spec.yaml"
MODEL = "model.py"
TOKENIZER = "tokenizer.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"

_STEP_DIR = re.compile(r"^step_(\d{7,})$")


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
