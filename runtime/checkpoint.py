"""Checkpoints: safetensors tensors plus one JSON file, written atomically, never unpickled.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` holding ``model.safetensors``,
``optimizer.safetensors`` and ``state.json`` (step, data position, RNG, hashes). It is written
under a temporary name and renamed into place, so a run killed at any moment leaves either the
whole checkpoint or none of it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from cartspec.errors import UserError
from cartspec.files import Unreadable, read_bounded
from cartspec.runtime.atomic import as_umask_allows
from cartspec.runtime.distributed import is_sharded
from cartspec.runtime.rundir import checkpoint_dir, checkpoint_name, list_checkpoints

FORMAT = 1
MAX_STATE_BYTES = 1 << 24  # state.json holds a step, hashes and optimizer hyperparameters


@dataclass(frozen=True)
class Loaded:
    step: int
    state: dict[str, Any]
    path: Path


def save(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    *,
    is_main: bool = True,
) -> Path | None:
    """Write the checkpoint of ``step`` atomically, then drop all but the newest ``keep``.

    Every rank calls it (a sharded model is gathered to rank 0 first); only rank 0 writes.
    """
    gathered = _gather_sharded(model, optimizer)
    if not is_main:
        return None
    root = checkpoint_dir(run_dir)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    for stale in root.glob(".step_*") if root.is_dir() else []:  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    if gathered is None:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
    else:
        weights, optimizer_state = gathered
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tensors, groups = _flatten_optimizer(optimizer_state)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / "rng.safetensors"))
    body = {"format": FORMAT, "step": step, "optimizer_groups": groups, **state}
    (tmp / "state.json").write_text(json.dumps(body, indent=2))
    for f in tmp.iterdir():
        as_umask_allows(f)  # safetensors writes its files 0600
        _fsync(f)
    old = None
    if final.exists():  # saved before (a resumed run trains through it again): set it aside
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:  # the new one cannot take its place: the old one stays
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        _remove(old)
    return final


def _remove(path: Path) -> None:
    """Rename out of the ``step_*`` namespace first, so a kill mid-delete leaves no half folder there."""
    doomed = path.with_name(f".{path.name}.{os.getpid()}.old")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint; a missing or corrupt one is a UserError naming it."""
    try:
        state = json.loads(read_bounded(path / "state.json", MAX_STATE_BYTES))
    except Unreadable as e:  # a FIFO or device in a run folder would block or never end
        if str(e) in ("no such file", "a folder on its path is a file"):
            raise UserError(f"{path}: not a checkpoint (no state.json)") from None
        raise UserError(f"{path}: cannot read the checkpoint ({e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}/state.json: corrupt checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise UserError(f"{path}/state.json: not a cartspec checkpoint of format {FORMAT}")
    wrong = _wrong_field(state)
    if wrong:  # an edited or foreign state.json: as damaged as a truncated one
        raise UserError(f"{path}/state.json: corrupt checkpoint ({wrong})")
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        if not (path / name).is_file():
            raise UserError(f"{path}: incomplete checkpoint, {name} is missing")
    return state


_REQUIRED: dict[str, type] = {"step": int, "optimizer_groups": list}
_OPTIONAL: dict[str, type] = {  # the training loop's own fields, checked when present
    "data": dict,
    "architecture_sha256": str,
    "model_sha256": str,
    "init_from": dict,
}


def _wrong_field(state: dict[str, Any]) -> str:
    """The first field of a state.json that is missing or of the wrong type, as a phrase; ""
    when all hold, so that an edited state.json is as damaged as a truncated one."""
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in state:
            if name in _REQUIRED:
                return f"no {name}"
            continue
        value = state[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name} is {type(value).__name__}, expected {kind.__name__}"
    if state["step"] < 0:
        return f"step is {state['step']}"
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in state["optimizer_groups"]):
        return "optimizer_groups is not a list of parameter groups"
    data = state.get("data", {})
    if any(not isinstance(data.get(k), int) or isinstance(data.get(k), bool) for k in data):
        return "data holds a value that is not an integer"
    return ""


def check_whole(path: Path) -> dict[str, Any]:
    """The state of a checkpoint whose files all read back; a UserError names the first that
    does not (before any data is prepared for a run that could not resume from it)."""
    state = read_state(path)
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        try:
            load_file(str(path / name))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}/{name}: corrupt checkpoint ({e})") from None
    return state


def newest_valid(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files all read back; older ones are tried in turn."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            check_whole(path)
        except UserError:
            continue
        return path
    return None


def load_weights(path: Path, model: nn.Module) -> None:
    """Load model weights (strict); shared tensors come back shared."""
    try:
        missing, unexpected = load_model(_unwrap(model), str(path / "model.safetensors"), strict=False)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}/model.safetensors: corrupt checkpoint ({e})") from None
    except RuntimeError as e:  # shapes differ: another model
        raise UserError(f"{path}: weights do not fit this model ({_reason(e)})") from None
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Loaded:
    """Load weights, optimizer state and RNG state; returns the step and the JSON state."""
    state = read_state(path)
    try:
        tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: corrupt checkpoint ({e})") from None
    optimizer_state = _unflatten_optimizer(tensors, state["optimizer_groups"])
    if is_sharded(model):
        _load_sharded(path, model, optimizer, optimizer_state)
    else:
        load_weights(path, model)
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, IndexError) as e:  # other parameter groups (train.optimizer.decay)
            raise UserError(
                f"{path}: its optimizer state does not fit this run's parameter groups "
                f"(was train.optimizer.decay changed?): {_reason(e)}"
            ) from None
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return Loaded(int(state["step"]), state, path)


# ----------------------------------------------------------------------------- sharded models
# A sharded (FSDP2) model is saved in the format of a whole one: full tensors under the plain
# parameter names, optimizer slots by parameter index. So a run resumes on any number of
# processes with either strategy, and eval and sample load it in one process.


def _gather_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Full weights and optimizer state of a sharded model on rank 0 (a collective: every rank
    calls it); None for a model that is not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    for group in _alias_groups(model):  # a shared tensor is stored once, as save_model does
        for alias in group[1:]:
            weights.pop(alias, None)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    index = {name: i for i, name in enumerate(_optimizer_order(model, optimizer))}
    by_index = {  # empty on the other ranks
        "state": {index[name]: slots for name, slots in by_name.get("state", {}).items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in by_name.get("param_groups", [])
        ],
    }
    return {k: v.contiguous() for k, v in weights.items()}, by_index


def _load_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, optimizer_state: dict[str, Any]
) -> None:
    """Every rank reads the full checkpoint and keeps its own shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    try:
        weights = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}/model.safetensors: corrupt checkpoint ({e})") from None
    order = _optimizer_order(model, optimizer)
    by_name = {
        "state": {order[int(i)]: slots for i, slots in optimizer_state["state"].items()},
        "param_groups": [
            {**g, "params": [order[i] for i in g["params"]]} for g in optimizer_state["param_groups"]
        ],
    }
    try:
        missing, unexpected = set_model_state_dict(
            model, weights, options=StateDictOptions(full_state_dict=True, strict=False)
        )
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, IndexError, ValueError) as e:
        raise UserError(f"{path}: weights do not fit this model ({_reason(e)})") from None
    # a shared tensor is stored under one of its names; the others load with it
    loaded = {name for group in _alias_groups(model) if set(group) & set(weights) for name in group}
    missing = [name for name in missing if name not in loaded]
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _reason(error: Exception) -> str:
    """The first line of a load error that says what does not fit (torch's first line only says
    that something does not)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """The names of each parameter reachable under more than one name (sharing groups)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _optimizer_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's own numbering (its groups in order)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{name}"] = t.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
