"""``--init-from``: a new run that starts from another run's trained weights (new data, new
recipe, a new tokenizer that fits the vocabulary), with its own step counter and a fresh optimizer.

The weights must fit the new spec's model parameter by parameter, by name and shape; settings
that change no shape (the loop count, a gate's init, the RoPE base) may differ. Every parameter
that does not fit is one located line, before any data is prepared or any file written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from cartspec.codegen.render import render
from cartspec.errors import Problem, SpecError, UserError
from cartspec.resolve import Resolved
from cartspec.runtime import checkpoint, rundir
from cartspec.runtime.generated import import_module


@dataclass(frozen=True)
class Source:
    """The checkpoint a run starts from, and what the run folder records of it."""

    named: str  # as --init-from named it
    checkpoint: Path
    record: dict[str, Any]  # checkpoint (absolute), step, architecture_sha256, tokenizer


def find(text: str, resolved: Resolved, announce: bool) -> Source:
    """The checkpoint ``--init-from`` names (a checkpoint folder, or a run folder's newest valid
    one), once its weights fit the model ``resolved`` builds."""
    path = _checkpoint(text)
    state = checkpoint.read_state(path)
    problems = mismatches(path, _meta_model(resolved))
    if problems:
        raise SpecError(problems)
    record = {
        "checkpoint": str(path.resolve()),
        "step": state["step"],
        "architecture_sha256": state.get("architecture_sha256"),
        "tokenizer": state.get("tokenizer"),
    }
    if announce and record["architecture_sha256"] != resolved.sha256:
        print(
            f"note: --init-from {text}: the architecture differs from the one it was trained as, "
            "but every parameter fits by name and shape",
            file=sys.stderr,
        )
    return Source(text, path, record)


def _checkpoint(text: str) -> Path:
    if not text.strip():
        raise UserError("--init-from: expected a run folder or a checkpoint folder, got an empty value")
    path = Path(text)
    if not path.exists():
        raise UserError(f"--init-from {text}: no such run or checkpoint")
    if (path / "state.json").exists():
        return path
    if not (path / rundir.CHECKPOINTS).is_dir():
        raise UserError(f"--init-from {text}: neither a run folder nor a checkpoint folder")
    found = checkpoint.newest_valid(path)
    if found is None:
        raise UserError(f"--init-from {text}: the run holds no checkpoint that reads back whole")
    return found


def _meta_model(resolved: Resolved) -> torch.nn.Module:
    """The model the spec builds, on the meta device: names and shapes without memory or
    initialisation, from the code that will be trained (nothing is written yet)."""
    module = import_module(Path(rundir.MODEL), render(resolved).encode("utf-8"))
    with torch.device("meta"):
        return module.Model()


def mismatches(path: Path, model: torch.nn.Module) -> list[Problem]:
    """One problem per tensor of ``model`` missing from the checkpoint or of another shape
    there, and per tensor of the checkpoint the model has no place for. A tensor shared under
    several names (a sharing group) is stored under one of them."""
    weights = path / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: corrupt checkpoint ({e})") from None
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    where = f"--init-from {weights}"
    problems = []
    for group in names.values():
        found = [name for name in group if name in stored]
        if not found:
            problems.append(
                Problem(where, group[0], f"{_shape(shapes[group[0]])} in this model, not in the checkpoint")
            )
        for name in found:
            if stored[name] != shapes[name]:
                problems.append(
                    Problem(
                        where,
                        name,
                        f"{_shape(stored[name])} in the checkpoint, {_shape(shapes[name])} in this model",
                    )
                )
    known = {name for group in names.values() for name in group}
    for name in sorted(stored.keys() - known):
        problems.append(Problem(where, name, f"{_shape(stored[name])} in the checkpoint, not in this model"))
    return problems


def _shape(shape: tuple[int, ...]) -> str:
    return f"shape [{', '.join(map(str, shape))}]"
