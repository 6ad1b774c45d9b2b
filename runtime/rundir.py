"""The layout of a run folder, owned in one place (no torch: sweeps and reports read it too).

A run folder holds everything needed to read, resume, evaluate or sample a run later::

    spec.yaml        the resolved spec that was trained, every default written out
    model.py         the generated code that was trained
    tokenizer.json   the tokenizer (absent for .bin data without one)
    env.json         versions, device and processes
    metrics.jsonl    one JSON object per logged step
    checkpoints/step_NNNNNNN/   model, optimizer and RNG safetensors plus state.json
    tensorboard/     TensorBoard event files of the metrics (with --tensorboard)
    .lock            held by the one training that writes the folder (pid and host inside)

Every file gets the permissions the umask gives (a group can read a run on a shared disk).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from cartspec import __version__
from cartspec.console import finite
from cartspec.errors import UserError
from cartspec.files import Unreadable, read_bounded, reason
from cartspec.loader import read_yaml
from cartspec.resolve import Resolved, resolve_data, spec_dict
from cartspec.runtime.atomic import write_atomic

SPEC = "spec.yaml"
MODEL = "model.py"
TOKENIZER = "tokenizer.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
MAX_MODEL_BYTES = 1 << 24  # a generated model.py is tens of kB
MAX_ENV_BYTES = 1 << 20

_STEP_DIR = re.compile(r"^step_(\d{7,})$")
_MODEL_SHA256 = re.compile(r'^ARCHITECTURE_SHA256 = "([0-9a-f]{64})"$', re.MULTILINE)


def run_dir_for(resolved: Resolved, out: Path | None) -> Path:
    """Where a run goes: ``out`` when given, else ``runs/<spec name>``."""
    return out if out is not None else Path("runs") / resolved.spec.name


# ----------------------------------------------------------------------------- the lock


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for one training: a second one is refused in one line instead of
    interleaving its metrics and checkpoints with the first.

    An ``flock`` on ``.lock``: the kernel releases it when the holder dies however it dies, so a
    killed run leaves no stale lock (the file stays; only the lock on it counts). The file names
    the holder's pid and host for the refusal. A run folder on a network file system without
    ``flock`` is not protected.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock to take
        yield
        return
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write to the run directory ({reason(e)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir}: another training is writing to this run directory{_holder(path)}; "
                "wait for it to end, or pass --out for a new run"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    """ " (pid 123 on host)" from a held lock file, or "" when it says nothing readable."""
    try:
        pid, host = read_bounded(path, 1024).decode("utf-8").split()[:2]
    except (Unreadable, UnicodeDecodeError, ValueError):
        return ""
    return f" (pid {pid} on {host})" if pid.isdigit() and host.isprintable() else ""


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


def check_model(run_dir: Path, resolved: Resolved, recorded: str | None) -> bytes:
    """The run's ``model.py``, read once and checked before anything imports it: its
    ``ARCHITECTURE_SHA256`` is the spec's (weights load only into the architecture they were
    trained as), and its whole content is the file the checkpoint recorded (``recorded``, the
    sha256 in ``state.json``), so code appended to it never runs. A checkpoint older than that
    record is accepted only when ``model.py`` is exactly what this cartspec renders from
    ``spec.yaml``. Returns the checked bytes: import those, not the file again."""
    path = run_dir / MODEL
    try:
        source = read_bounded(path, MAX_MODEL_BYTES)
    except Unreadable as e:
        if str(e) == "no such file":
            raise UserError(f"{run_dir}: no {MODEL}, the generated code the run was trained with") from None
        raise UserError(f"{path}: {e}") from None
    found = _MODEL_SHA256.search(source.decode("utf-8", errors="replace"))
    if found is None or found.group(1) != resolved.sha256:
        raise UserError(
            f"{path}: ARCHITECTURE_SHA256 differs from the architecture in {SPEC}; refusing to load"
        )
    if recorded is not None:
        if sha256_bytes(source) != recorded:
            raise UserError(
                f"{path}: differs from the file its checkpoint was trained with (sha256 in "
                "state.json); refusing to run it"
            )
    elif source != _rendered(resolved):
        raise UserError(
            f"{path}: differs from what cartspec generates from {SPEC}, and its checkpoint records "
            "no sha256 of the file trained with; refusing to run it"
        )
    return source


def sha256_bytes(data: bytes) -> str:
    """The sha256 of ``model.py``'s bytes, as a checkpoint records it."""
    return hashlib.sha256(data).hexdigest()


def model_sha256(run_dir: Path) -> str:
    """The sha256 of the run's ``model.py`` as it is on disk now (training records it)."""
    return sha256_bytes((run_dir / MODEL).read_bytes())


def _rendered(resolved: Resolved) -> bytes:
    from cartspec.codegen.render import render

    return render(resolved).encode("utf-8")


# ----------------------------------------------------------------------------- env.json


def write_env(
    run_dir: Path, spec_file: Path, machine: dict[str, Any], init_from: dict[str, Any] | None = None
) -> None:
    """Versions and where the spec came from; ``machine`` adds torch's version and the device,
    which only the caller can know without this module importing torch. ``init_from``: the
    checkpoint whose weights the run started from (--init-from)."""
    env = {
        "cartspec": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **machine,
        "spec_file": str(spec_file),
        **({"init_from": init_from} if init_from is not None else {}),
    }
    write_atomic(run_dir / ENV, json.dumps(env, indent=2))


def read_env(run_dir: Path) -> dict[str, Any]:
    """``env.json`` as written by :func:`write_env`; empty when the run has none."""
    path = run_dir / ENV
    try:
        env = json.loads(read_bounded(path, MAX_ENV_BYTES))
    except (Unreadable, ValueError):  # absent, not a file, too large, or not JSON
        return {}
    return env if isinstance(env, dict) else {}


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
            self.file.write(json.dumps(finite(record), allow_nan=False) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, oldest first (a torn line is skipped)."""
    path = run_dir / METRICS
    try:
        text = read_bounded(path).decode("utf-8", errors="replace")
    except Unreadable:  # absent, or not a regular file (a FIFO would block)
        return []
    records = []
    for line in text.splitlines():
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
