"""Write a file whole or not at all (no torch: the run folder's torch-free readers and writers use it).

A temporary file next to the target is filled, synced and moved into place with ``os.replace``,
so a reader, or a run cut short by a crash, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Open a temp file next to ``path`` and move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name (not mkstemp) so the file gets the umask's permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a whole file atomically (str is encoded as UTF-8)."""
    with atomic_writer(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
