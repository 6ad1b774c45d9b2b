"""Write generated modules atomically, or compare them with what is on disk (``--check``)."""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

from cartspec.errors import UserError


def write_atomic(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` through a temporary file and a rename; False if unchanged.

    Readers (and a second ``compile`` running at once) see the old file or the new one, never
    half of one.
    """
    if path.is_dir():
        raise UserError(f"{path}: a directory stands where the generated file should be written")
    try:
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the existing file ({e})") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write there ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write it ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def drift(path: Path, text: str) -> str | None:
    """A unified diff from the file on disk to ``text``; None when they agree."""
    if not path.exists():
        return f"{path}: missing; run `cartspec compile` to create it\n"
    current = path.read_text(encoding="utf-8")
    if current == text:
        return None
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        text.splitlines(keepends=True),
        f"{path} (on disk)",
        f"{path} (compiled)",
    )
    return "".join(diff)
