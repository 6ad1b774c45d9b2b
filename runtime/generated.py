"""Import generated model modules, compiling a spec first when its module is missing or stale."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from cartspec.codegen.render import render
from cartspec.resolve import Resolved
from cartspec.runtime.atomic import write_atomic


def import_module(path: str | Path, source: bytes | None = None) -> ModuleType:
    """Import a generated file by path under a name unique to its content.

    ``source`` is the file's content when the caller has read and checked it already: those
    bytes are what runs, so a file changed between the check and the import runs nothing new.
    The module is registered in ``sys.modules`` (dataclasses need that) under a name that
    includes a hash of the source, so two versions of one spec never shadow each other.
    """
    path = Path(path)
    source = path.read_bytes() if source is None else source
    digest = hashlib.sha256(source).hexdigest()[:12]
    name = f"cartspec_generated_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - generated code
    except BaseException:
        del sys.modules[name]
        raise
    return module


def compiled_module(
    resolved: Resolved, out_dir: str | Path, filename: str | None = None
) -> tuple[ModuleType, Path]:
    """Render the spec into ``out_dir/<filename or name.py>`` (rewritten only when it changed) and
    import it."""
    target = Path(out_dir) / (filename or f"{resolved.spec.name}.py")
    text = render(resolved)
    if not (target.is_file() and target.read_text(encoding="utf-8") == text):
        write_atomic(target, text)
    return import_module(target), target
