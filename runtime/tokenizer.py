"""Tokenizers: a locally trained byte-level BPE, any HF ``tokenizer.json``, or raw bytes.

All share one small interface (``Tokenizer``). ``encode`` never adds special tokens: the data
pipeline wraps every document as BOS + ids + EOS itself, whatever the tokenizer's own
post-processor would do. ``fingerprint`` is the sha256 of the serialized form (exactly the
bytes ``save`` writes), so it keys token caches. Special-token strings that occur inside a
document's text are encoded as ordinary text, so only the pipeline places BOS/EOS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tokenizers import Tokenizer as HFTokenizerCore
from tokenizers import decoders, models, pre_tokenizers, trainers

from cartspec.files import Unreadable, read_bounded

from .atomic import write_atomic
from .corpus import DataError

if TYPE_CHECKING:
    from .corpus import Corpus

BOS, EOS = "<|bos|>", "<|eos|>"
BOS_NAMES = (BOS, "<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
EOS_NAMES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[SEP]")
_BYTES_MARKER = "cartspec-bytes"
_BPE_RECIPE = "bpe1"  # bump when train_bpe changes, so stale cached tokenizers are not reused
_MIN_BPE_VOCAB = 258  # two specials + the 256-byte alphabet
MAX_TOKENIZER_BYTES = 1 << 28  # the largest public tokenizer.json files are tens of MB


class Tokenizer(Protocol):
    vocab_size: int  # every id is < vocab_size
    bos_id: int
    eos_id: int
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, path: Path) -> None: ...


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class HFTokenizer:
    """A HF ``tokenizers.Tokenizer`` with BOS/EOS ids found by their usual names."""

    def __init__(self, core: HFTokenizerCore, origin: str = "tokenizer") -> None:
        self._core = core
        core.encode_special_tokens = True  # "<|eos|>" typed in a document is text, not a boundary
        self._json = core.to_str(pretty=True)
        self.fingerprint = _sha256(self._json)
        vocab = core.get_vocab(with_added_tokens=True)
        if not vocab:
            raise DataError(f"{origin}: tokenizer has an empty vocabulary")
        self.vocab_size = max(vocab.values()) + 1  # ids may have gaps; the embedding must cover all
        self.bos_id, self.eos_id = _special_ids(core, vocab, origin)

    def encode(self, text: str) -> list[int]:
        return self._core.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Parallel (in Rust) encoding; what the token cache uses."""
        return [e.ids for e in self._core.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens (BOS/EOS) left out."""
        return self._core.decode(list(ids), skip_special_tokens=True)

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self._json)


def _special_ids(core: HFTokenizerCore, vocab: dict[str, int], origin: str) -> tuple[int, int]:
    """BOS/EOS by common names; one found serves as both; else the first special token."""
    bos = next((vocab[n] for n in BOS_NAMES if n in vocab), None)
    eos = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
    if bos is None and eos is None:
        specials = [i for i, t in core.get_added_tokens_decoder().items() if t.special]
        if not specials:
            raise DataError(
                f"{origin}: no BOS/EOS token found (looked for {', '.join(BOS_NAMES + EOS_NAMES)})"
            )
        bos = eos = min(specials)
    return (bos if bos is not None else eos), (eos if eos is not None else bos)


class ByteTokenizer:
    """Raw UTF-8 bytes as ids 0..255, BOS = 256, EOS = 257: no training, no files."""

    vocab_size = 258
    bos_id = 256
    eos_id = 257

    def __init__(self) -> None:
        self._json = json.dumps({"type": _BYTES_MARKER, "bos_id": 256, "eos_id": 257}, indent=2)
        self.fingerprint = _sha256(self._json)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes to text with BOS/EOS left out; invalid UTF-8 (a cut sample) becomes U+FFFD."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self._json)


def tokenizers_core(tokenizer: Tokenizer) -> HFTokenizerCore:
    """A fresh ``tokenizers.Tokenizer`` that encodes and decodes text as ``tokenizer`` does, for
    tools that read a ``tokenizer.json`` (an export): the HF one copied, raw bytes as a byte-level
    BPE without merges whose symbol for byte b has id b."""
    if isinstance(tokenizer, HFTokenizer):
        return HFTokenizerCore.from_str(tokenizer._json)
    if not isinstance(tokenizer, ByteTokenizer):
        raise TypeError(f"no tokenizer.json form for {type(tokenizer).__name__}")
    vocab = {symbol: b for b, symbol in enumerate(_byte_symbols())}
    core = HFTokenizerCore(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([BOS, EOS])  # ids 256 and 257, after the bytes
    return core


def _byte_symbols() -> list[str]:
    """The character byte-level BPE writes for each byte value: printable Latin-1 bytes stand for
    themselves, the others (controls, space, ...) take the code points from 256 on, in order."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def train_bpe(documents: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE (BOS = 0, EOS = 1, then the 256 byte symbols, then merges).

    ``documents`` is consumed as a stream (the trainer keeps word counts, not the text).
    Deterministic: the same documents give a byte-identical ``tokenizer.json``. A corpus too
    small for ``vocab_size`` merges yields a smaller vocabulary.
    """
    if vocab_size < _MIN_BPE_VOCAB:
        raise DataError(f"BPE vocab_size must be >= {_MIN_BPE_VOCAB} (256 bytes + BOS/EOS)")
    core = HFTokenizerCore(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    fed = 0

    def counted() -> Iterator[str]:
        nonlocal fed
        for doc in documents:
            fed += 1
            yield doc

    core.train_from_iterator(counted(), trainer=trainer)
    if not fed:
        raise DataError("cannot train a BPE tokenizer on an empty corpus")
    return HFTokenizer(core, origin="trained BPE")


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    """Load any HF ``tokenizer.json`` (or a saved ``ByteTokenizer``)."""
    path = Path(path).expanduser()
    try:
        text = read_bounded(path, MAX_TOKENIZER_BYTES).decode("utf-8")
    except Unreadable as e:  # a FIFO or a device would block or never end
        if str(e) == "no such file":
            raise DataError(f"tokenizer file not found: {path}") from e
        raise DataError(f"cannot read tokenizer file {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read tokenizer file {path}: not UTF-8 (byte {e.start})") from e
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise DataError(f"corrupt tokenizer file {path}: {e}") from e
    if isinstance(spec, dict) and spec.get("type") == _BYTES_MARKER:
        return ByteTokenizer()
    try:
        core = HFTokenizerCore.from_str(text)
    except Exception as e:  # the Rust side raises plain Exception
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"invalid tokenizer file {path}: {reason}") from e
    return HFTokenizer(core, origin=str(path))


def build_tokenizer(
    kind: str,
    corpus: Corpus | None = None,
    vocab_size: int | None = None,
    path: str | Path | None = None,
    cache_dir: Path | None = None,
) -> Tokenizer:
    """The tokenizer a run asks for: ``"bpe"`` (trained on ``corpus``, cached under
    ``cache_dir/tokenizers`` by the corpus signature and vocab size; ``cache_dir=None`` trains
    without caching), ``"file"`` (``path`` to a tokenizer.json) or ``"bytes"``."""
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "file":
        if path is None:
            raise DataError("tokenizer kind 'file' needs a path to a tokenizer.json")
        return load_tokenizer_file(path)
    if kind != "bpe":
        raise DataError(f"unknown tokenizer kind {kind!r}; expected 'bpe', 'file' or 'bytes'")
    if corpus is None or vocab_size is None:
        raise DataError("tokenizer kind 'bpe' needs the training corpus and a vocab_size")
    if cache_dir is None:
        return train_bpe(corpus.documents(), vocab_size)
    cached = Path(cache_dir) / "tokenizers" / f"{_BPE_RECIPE}-{vocab_size}-{corpus.signature[:16]}.json"
    if cached.is_file():
        try:
            return load_tokenizer_file(cached)
        except DataError:
            pass  # a damaged cache entry is simply retrained and overwritten
    tokenizer = train_bpe(corpus.documents(), vocab_size)
    tokenizer.save(cached)
    return tokenizer
