"""The token cache file: a corpus tokenized once, read back by memmap on every later run.

One file holds every document as BOS + ids + EOS in corpus order, then where each document ends
(uint64 token offsets), behind a header: magic, format version, token width, counts, the key of
what was tokenized (the corpus signature and the tokenizer) and the sha256 of everything after
the header. The train/validation cut is made at a document end when the file is read, so a new
``val_fraction`` needs no new tokenization. A file that is truncated, extended, has a bad magic
or header, or whose bytes no longer match their sha256 is damaged: reading it says so in one
line and the caller rebuilds it. It is written to a temporary file and renamed into place, so an
interrupted build leaves the old file or none.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

import numpy as np

from cartspec.files import reason
from cartspec.runtime.atomic import atomic_writer

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

MAGIC = b"CARTTOKS"
VERSION = 1
HEADER_BYTES = 128
_HEADER = struct.Struct("<8sIIQQ32s32s")  # magic, version, itemsize, tokens, documents, key, sha256
_ENCODE_CHARS = 1 << 20  # text per tokenizer call: enough for its threads; its encodings take ~70 MB
_COPY_BYTES = 1 << 24


@dataclass(frozen=True)
class TokenFile:
    """A checked token cache file."""

    path: Path
    dtype: np.dtype
    n_tokens: int
    n_documents: int

    def tokens(self) -> np.ndarray:
        """Every token, as a read-only memmap."""
        return np.memmap(self.path, self.dtype, mode="r", offset=HEADER_BYTES, shape=(self.n_tokens,))

    def document_end(self, index: int) -> int:
        """The token offset just past document ``index``."""
        with open(self.path, "rb") as f:
            f.seek(HEADER_BYTES + self.n_tokens * self.dtype.itemsize + 8 * index)
            return int.from_bytes(f.read(8), "little")


class _Header(NamedTuple):
    magic: bytes
    version: int
    itemsize: int
    n_tokens: int
    n_documents: int
    key: bytes
    sha256: bytes


def read_token_file(path: Path, dtype: np.dtype, key: bytes) -> TokenFile | None:
    """The cache at ``path`` if it holds what ``key`` names; None when it is absent, was written
    for other inputs or by another format version, or is damaged (then a warning line says so)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            if len(raw) < HEADER_BYTES:
                problem = f"{len(raw)} bytes, shorter than its header"
            else:
                header = _Header._make(_HEADER.unpack_from(raw))
                if header.magic == MAGIC and (header.version != VERSION or header.key != key):
                    return None  # another format, or the corpus or tokenizer changed: a plain rebuild
                problem = _problem(f, header, dtype)
    except FileNotFoundError:
        return None
    except OSError as e:
        problem = f"unreadable: {reason(e)}"
    if problem is not None:
        print(f"warning: token cache {path} is damaged ({problem}); rebuilding it", file=sys.stderr)
        return None
    return TokenFile(path, dtype, header.n_tokens, header.n_documents)


def _problem(f: IO[bytes], header: _Header, dtype: np.dtype) -> str | None:
    """What is wrong with an open cache file, or None; ``f`` is just past the header."""
    if header.magic != MAGIC:
        return "bad magic"
    if header.itemsize != dtype.itemsize:
        return f"its header says {header.itemsize}-byte tokens, expected {dtype.itemsize}"
    size = os.fstat(f.fileno()).st_size
    expected = HEADER_BYTES + header.n_tokens * header.itemsize + 8 * header.n_documents
    if size != expected:
        return f"{size} bytes where its header promises {expected}"
    if _sha256(f) != header.sha256:
        return "its bytes do not match their sha256"
    return None


def _sha256(f: IO[bytes]) -> bytes:
    """sha256 of the rest of ``f``, read in blocks (a cache can be gigabytes)."""
    h = hashlib.sha256()
    while block := f.read(_COPY_BYTES):
        h.update(block)
    return h.digest()


def write_token_file(
    path: Path, documents: Iterable[str], tokenizer: Tokenizer, dtype: np.dtype, key: bytes
) -> TokenFile:
    """Tokenize ``documents`` a chunk at a time into a new cache file at ``path``.

    Document ends go to an unnamed temporary file first and are appended after the tokens, so
    neither list is ever whole in memory; the header is written last, over its placeholder.
    """
    bos, eos = np.array([tokenizer.bos_id], dtype), np.array([tokenizer.eos_id], dtype)
    digest = hashlib.sha256()
    n_tokens = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f, tempfile.TemporaryFile(dir=path.parent) as ends:
        f.write(bytes(HEADER_BYTES))
        for chunk in _chunks(documents):
            parts = []
            for ids in tokenizer.encode_batch(chunk):
                parts += (bos, np.asarray(ids, dtype), eos)
            lengths = np.fromiter((len(p) + 2 for p in parts[1::3]), np.uint64, len(parts) // 3)
            ends.write((np.cumsum(lengths) + np.uint64(n_tokens)).astype("<u8").tobytes())
            data = np.concatenate(parts).tobytes()
            f.write(data)
            digest.update(data)
            n_tokens += len(data) // dtype.itemsize
        n_docs = ends.tell() // 8
        ends.seek(0)
        while block := ends.read(_COPY_BYTES):
            f.write(block)
            digest.update(block)
        f.seek(0)
        f.write(_HEADER.pack(MAGIC, VERSION, dtype.itemsize, n_tokens, n_docs, key, digest.digest()))
    return TokenFile(path, dtype, n_tokens, n_docs)


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    """Groups of documents of about _ENCODE_CHARS characters: large enough for the tokenizer's
    parallelism, small enough that its encodings and the id lists stay bounded."""
    chunk: list[str] = []
    size = 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if size >= _ENCODE_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
