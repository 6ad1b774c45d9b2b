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


def umask() -> int:
    """The process's umask, read without changing it where the kernel tells it (Linux's
    /proc/self/status); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(path: Path) -> None:
    """Give a file written by a library that creates it private (safetensors writes 0600) the
    permissions an ordinary file gets: colleagues in the group can read a run on a shared disk
    when the umask lets them."""
    os.chmod(path, 0o666 & ~umask())


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a whole file atomically (str is encoded as UTF-8)."""
    with atomic_writer(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
