"""Training data: corpora, cached token files, pre-tokenized `.bin` files and batch streams.

Flow for text sources: ``open_corpus`` (corpus.py) -> ``build_tokenizer`` (tokenizer.py) ->
``prepare_tokens`` (token_cache.py) -> ``BatchStream`` / ``val_batches``. Pre-tokenized sources
skip the first three steps through ``load_bin_splits``; ``prepare_data`` takes either path for a
spec. A corpus is streamed, never held whole, and an unchanged one is never read again: its
caches are keyed by its files' sizes and modification times.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cartspec.runtime.corpus import Corpus, DataError, open_corpus
from cartspec.runtime.token_cache import read_token_file, write_token_file

if TYPE_CHECKING:
    from cartspec.schema import Spec

    from .tokenizer import Tokenizer


def default_cache_dir() -> Path:
    """Where tokenizers and token files are cached: $CARTSPEC_CACHE or ~/.cache/cartspec."""
    env = os.environ.get("CARTSPEC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cartspec"


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
    corpus: Corpus,
    tokenizer: Tokenizer,
    cache_dir: Path,
    val_fraction: float = 0.05,
    model_vocab: int | None = None,
) -> TokenSplits:
    """Tokenize once and cache: each document becomes BOS + ids + EOS; the last documents
    (at least one, about ``val_fraction`` of them) form the validation stream.

    The cache is ``cache_dir/tokens/<corpus>-<tokenizer>.tokens``, one file per corpus location
    and tokenizer; its header records the corpus signature (file sizes and mtimes), so a changed
    corpus is tokenized again into the same file, and a damaged file is rebuilt.
    """
    if model_vocab is not None and tokenizer.vocab_size > model_vocab:
        raise DataError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model vocab is {model_vocab}; "
            "raise the model's vocab_size or use a smaller tokenizer"
        )
    _check_fraction(val_fraction)
    dtype = token_dtype(tokenizer.vocab_size)
    path = Path(cache_dir) / "tokens" / f"{corpus.identity[:16]}-{tokenizer.fingerprint[:16]}.tokens"
    key = hashlib.sha256(f"{corpus.signature}\0{tokenizer.fingerprint}".encode()).digest()
    cached = read_token_file(path, dtype, key) or write_token_file(
        path, corpus.documents(), tokenizer, dtype, key
    )
    n_val = _n_val_documents(cached.n_documents, val_fraction)
    cut = cached.document_end(cached.n_documents - n_val - 1)
    tokens = cached.tokens()
    return TokenSplits(train=tokens[:cut], val=tokens[cut:])


def _n_val_documents(n_docs: int, val_fraction: float) -> int:
    """Held-out document count: about val_fraction of them, at least one, never all."""
    if n_docs < 2:
        raise DataError(f"corpus has {n_docs} document(s); need at least 2 to hold one out for validation")
    return min(n_docs - 1, max(1, round(n_docs * val_fraction)))


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")


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
    corpus = open_corpus(data.source)
    tokenizer = build_tokenizer(
        data.tokenizer, corpus, spec.model.vocab_size, path=data.tokenizer_path, cache_dir=cache_dir
    )
    return tokenizer, prepare_tokens(corpus, tokenizer, cache_dir, data.val_fraction, spec.model.vocab_size)


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
