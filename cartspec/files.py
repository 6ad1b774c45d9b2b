"""Reading a file the user named, bounded: only a regular file, and never more than a limit.

A path can name a FIFO (reading blocks until a writer comes, perhaps never) or a device such as
``/dev/zero`` (reading never ends). ``stat`` before ``open`` would race, and ``st_size`` of a
device is 0, so the file is opened without blocking, its kind is read from the open descriptor,
and at most ``limit + 1`` bytes are read from it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


class Unreadable(Exception):
    """A file that cannot be read as asked; ``str()`` says why, without the path."""


class TooLarge(Unreadable):
    """A regular file over the limit; ``size`` is what was seen (a lower bound if it grew)."""

    def __init__(self, size: int, limit: int):
        self.size, self.limit = size, limit
        super().__init__(f"file is {size:,} bytes; at most {limit:,} are read")


_REASONS = {
    errno.ENOENT: "no such file",
    errno.ELOOP: "a symbolic link loop",
    errno.EACCES: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a folder on its path is a file",
    errno.ENAMETOOLONG: "file name too long",
}

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def reason(error: OSError) -> str:
    """An OSError in a few words, without the path it names."""
    return _REASONS.get(error.errno or 0, (error.strerror or str(error)).lower())


def kind_of(mode: int) -> str:
    """What a non-regular file is, for a message ("a FIFO", "a character device")."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bounded(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``; :class:`Unreadable` when it is anything else,
    cannot be opened, or holds more than ``limit`` bytes (None: no limit)."""
    fd = _open_regular(path)
    try:
        return _read_at_most(fd, limit)
    except OSError as e:
        raise Unreadable(reason(e)) from None
    finally:
        os.close(fd)


def open_regular(path: str | Path) -> BinaryIO:
    """The regular file ``path`` opened for reading in binary, to be read piece by piece (a
    corpus); :class:`Unreadable` when it is anything else or cannot be opened."""
    return os.fdopen(_open_regular(path), "rb")


def _open_regular(path: str | Path) -> int:
    """A descriptor of ``path``, opened without blocking and checked to be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise Unreadable(reason(e)) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise Unreadable(reason(e)) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Unreadable("is a directory" if stat.S_ISDIR(mode) else f"{kind_of(mode)}, not a regular file")
    return fd


def _read_at_most(fd: int, limit: int | None) -> bytes:
    """Every byte of ``fd``, refusing past ``limit`` (checked on what is read, not on st_size,
    which a file growing meanwhile would outrun)."""
    size = os.fstat(fd).st_size
    if limit is not None and size > limit:
        raise TooLarge(size, limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total > limit:
            raise TooLarge(total, limit)
