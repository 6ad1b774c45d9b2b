"""Data pipeline: corpora, tokenizers, token caches, .bin files and batch streams."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFCore
from tokenizers import models

from cartspec.runtime import tokenizer as tokenizer_mod
from cartspec.runtime.atomic import atomic_writer
from cartspec.runtime.data import (
    BatchStream,
    DataError,
    corpus_fingerprint,
    default_cache_dir,
    is_bin_source,
    load_bin_splits,
    load_documents,
    open_bin,
    prepare_tokens,
    val_batches,
)
from cartspec.runtime.tokenizer import (
    ByteTokenizer,
    build_tokenizer,
    load_tokenizer_file,
    train_bpe,
)

DOCS = ["first document", "second one, a bit longer", "third: naïve ✓", "fourth and last"]


@pytest.fixture(scope="module")
def bible() -> list[str]:
    return load_documents("bible")


@pytest.fixture(scope="module")
def small_bpe(bible: list[str]) -> tokenizer_mod.HFTokenizer:
    return train_bpe(bible[:100], 600)


class CountingTokenizer(ByteTokenizer):
    """A byte tokenizer that counts tokenization calls (to prove the cache is used)."""

    def __init__(self, vocab_size: int = 258) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.calls = 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.calls += 1
        return super().encode_batch(texts)


def wrapped(tok: ByteTokenizer, docs: list[str]) -> list[int]:
    return [i for d in docs for i in (tok.bos_id, *tok.encode(d), tok.eos_id)]


# ----------------------------------------------------------------------------- corpora


def test_bible_loads_one_document_per_chapter(bible: list[str]) -> None:
    assert len(bible) == 1189  # chapters in the KJV
    assert bible[0].startswith("Genesis 1\nIn the beginning God created")
    assert bible[-1].startswith("Revelation 22\n")


def test_text_jsonl_and_folder_sources(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("para one\nstill one\n\n\n  para two\n\n")
    (tmp_path / "a.jsonl").write_text('{"text": "j1"}\n\n{"text": "  "}\n{"text": "j2"}\n')
    (tmp_path / "skip.md").write_text("not data")
    assert load_documents(str(tmp_path / "b.txt")) == ["para one\nstill one", "  para two"]
    assert load_documents(str(tmp_path / "a.jsonl")) == ["j1", "j2"]
    assert load_documents(str(tmp_path)) == ["j1", "j2", "para one\nstill one", "  para two"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("missing.txt", None),
        ("empty.txt", b"\n\n  \n"),
        ("latin1.txt", b"caf\xe9"),
        ("bad.jsonl", b'{"text": "ok"}\n{"txt": "no"}\n'),
    ],
)
def test_bad_sources_raise_data_error_naming_the_path(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=name) as info:
        load_documents(str(path))
    assert "\n" not in str(info.value)


def test_corpus_fingerprint_sees_document_boundaries() -> None:
    assert corpus_fingerprint(["ab", "c"]) != corpus_fingerprint(["a", "bc"])
    assert corpus_fingerprint(DOCS) == corpus_fingerprint(list(DOCS))


# ----------------------------------------------------------------------------- tokenizers


def test_bpe_is_deterministic_and_saves_its_fingerprint(bible: list[str], tmp_path: Path) -> None:
    a, b = train_bpe(bible[:100], 600), train_bpe(bible[:100], 600)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint == hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()
    assert (a.bos_id, a.eos_id) == (0, 1)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=200))
def test_bpe_round_trips_any_text(small_bpe: tokenizer_mod.HFTokenizer, text: str) -> None:
    ids = small_bpe.encode(text)
    assert all(0 <= i < small_bpe.vocab_size for i in ids)
    assert small_bpe.decode(ids) == text


def test_bpe_special_token_text_is_not_a_boundary(small_bpe: tokenizer_mod.HFTokenizer) -> None:
    ids = small_bpe.encode("a<|eos|>b")
    assert small_bpe.eos_id not in ids
    assert small_bpe.decode(ids) == "a<|eos|>b"


def test_bpe_vocab_never_exceeds_request(bible: list[str]) -> None:
    assert train_bpe(bible[:20], 300).vocab_size == 300
    assert 258 <= train_bpe(["ab ab", "abc"], 5000).vocab_size < 5000
    with pytest.raises(DataError, match="258"):
        train_bpe(DOCS, 100)


def test_bpe_is_trained_once_per_corpus_and_size(
    bible: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = tokenizer_mod.train_bpe
    monkeypatch.setattr(tokenizer_mod, "train_bpe", lambda d, v: calls.append(v) or real(d, v))
    docs = bible[:30]
    first = build_tokenizer("bpe", docs, 400, cache_dir=tmp_path)
    again = build_tokenizer("bpe", docs, 400, cache_dir=tmp_path)
    assert calls == [400]
    assert again.fingerprint == first.fingerprint
    assert again.encode("And God said") == first.encode("And God said")
    build_tokenizer("bpe", docs, 500, cache_dir=tmp_path)
    assert calls == [400, 500]
    (cached,) = (tmp_path / "tokenizers").glob("*-400-*.json")
    cached.write_text("{truncated")
    assert build_tokenizer("bpe", docs, 400, cache_dir=tmp_path).fingerprint == first.fingerprint
    assert calls == [400, 500, 400]


def test_byte_tokenizer_round_trip_and_save(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo ✓")
    assert max(ids) < 256 and tok.vocab_size == 258
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == "héllo ✓"
    tok.save(tmp_path / "bytes.json")
    loaded = load_tokenizer_file(tmp_path / "bytes.json")
    assert isinstance(loaded, ByteTokenizer) and loaded.fingerprint == tok.fingerprint
    assert build_tokenizer("bytes").fingerprint == tok.fingerprint


def test_load_tokenizer_file_round_trips_a_trained_bpe(
    small_bpe: tokenizer_mod.HFTokenizer, tmp_path: Path
) -> None:
    small_bpe.save(tmp_path / "tokenizer.json")
    loaded = build_tokenizer("file", path=tmp_path / "tokenizer.json")
    assert loaded.fingerprint == small_bpe.fingerprint
    assert (loaded.vocab_size, loaded.bos_id, loaded.eos_id) == (small_bpe.vocab_size, 0, 1)
    assert loaded.encode("In the beginning") == small_bpe.encode("In the beginning")


@pytest.mark.parametrize(
    ("specials", "bos", "eos"),
    [
        (["<s>", "</s>"], "<s>", "</s>"),
        (["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>"),
        (["<pad>", "<bos>"], "<bos>", "<bos>"),
        (["<custom>"], "<custom>", "<custom>"),
    ],
)
def test_load_tokenizer_file_finds_bos_and_eos(
    tmp_path: Path, specials: list[str], bos: str, eos: str
) -> None:
    core = HFCore(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    core.add_special_tokens(specials)
    core.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id) == (core.token_to_id(bos), core.token_to_id(eos))
    assert tok.vocab_size == 2 + len(specials)


@pytest.mark.parametrize("content", [None, "{not json", '{"model": "nonsense"}'])
def test_bad_tokenizer_file_raises_data_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "tok.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match="tok.json") as info:
        load_tokenizer_file(path)
    assert "\n" not in str(info.value)


def test_unknown_tokenizer_kind_raises_data_error() -> None:
    with pytest.raises(DataError, match="sentencepiece"):
        build_tokenizer("sentencepiece")


# ----------------------------------------------------------------------------- token cache


def test_prepare_tokens_wraps_documents_and_holds_out_the_tail(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    splits = prepare_tokens(DOCS, tok, tmp_path, val_fraction=0.25, model_vocab=300)
    assert splits.train.dtype == np.uint16
    assert splits.train.tolist() == wrapped(tok, DOCS[:3])
    assert splits.val.tolist() == wrapped(tok, DOCS[3:])
    tiny = prepare_tokens(DOCS, tok, tmp_path, val_fraction=0.01)
    assert tiny.val.tolist() == wrapped(tok, DOCS[3:])  # at least one document held out


def test_prepare_tokens_uses_uint32_for_large_vocabularies(tmp_path: Path) -> None:
    splits = prepare_tokens(DOCS, CountingTokenizer(vocab_size=70_000), tmp_path)
    assert splits.train.dtype == np.uint32


def test_token_cache_is_reused(tmp_path: Path) -> None:
    tok = CountingTokenizer()
    first = prepare_tokens(DOCS, tok, tmp_path)
    (train_file,) = (tmp_path / "tokens").glob("*/train.bin")
    stamp = train_file.stat().st_mtime_ns
    second = prepare_tokens(DOCS, tok, tmp_path)
    assert tok.calls == 2  # one call per split, first time only
    assert train_file.stat().st_mtime_ns == stamp
    assert np.array_equal(first.train, second.train)


@pytest.mark.parametrize("damage", ["truncate", "same_size", "drop_meta", "garble_meta"])
def test_damaged_token_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """same_size: bytes flipped in place, the size kept; it used to be read as tokens."""
    tok = CountingTokenizer()
    expected = prepare_tokens(DOCS, tok, tmp_path).train.tolist()
    (folder,) = (tmp_path / "tokens").iterdir()
    if damage == "truncate":
        data = (folder / "train.bin").read_bytes()
        (folder / "train.bin").write_bytes(data[:-2])
    elif damage == "same_size":
        data = bytearray((folder / "train.bin").read_bytes())
        data[4:8] = b"\xff\xff\xff\xff"
        (folder / "train.bin").write_bytes(bytes(data))
    elif damage == "drop_meta":
        (folder / "meta.json").unlink()
    else:
        (folder / "meta.json").write_text("{")
    assert prepare_tokens(DOCS, tok, tmp_path).train.tolist() == expected
    assert tok.calls == 4
    assert json.loads((folder / "meta.json").read_text())["train_tokens"] == len(expected)
    assert not list(folder.glob(".*.tmp"))


def test_tokenizer_larger_than_model_vocab_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="258.*100"):
        prepare_tokens(DOCS, ByteTokenizer(), tmp_path, model_vocab=100)


def test_single_document_cannot_be_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2"):
        prepare_tokens(DOCS[:1], ByteTokenizer(), tmp_path)


def test_atomic_writer_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_default_cache_dir_honors_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CARTSPEC_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CARTSPEC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "cartspec"


# ----------------------------------------------------------------------------- .bin files


def test_bin_files_uint16_and_uint32(tmp_path: Path) -> None:
    small = np.arange(1000, dtype=np.uint16)
    big = np.arange(70_000, 71_000, dtype=np.uint32)
    small.tofile(tmp_path / "a.bin")
    big.tofile(tmp_path / "b.u32.bin")
    big.tofile(tmp_path / "c.bin")
    assert open_bin(tmp_path / "a.bin").dtype == np.uint16
    assert np.array_equal(open_bin(tmp_path / "a.bin"), small)
    assert np.array_equal(open_bin(tmp_path / "b.u32.bin"), big)
    assert np.array_equal(open_bin(tmp_path / "c.bin", "uint32"), big)
    splits = load_bin_splits(str(tmp_path / "a.bin"), val_fraction=0.1)
    assert np.array_equal(np.concatenate([splits.train, splits.val]), small)
    assert len(splits.val) == 100


def test_bin_folder_and_validation(tmp_path: Path) -> None:
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "val.bin")
    assert is_bin_source(str(tmp_path)) and is_bin_source("x.bin")
    assert not is_bin_source("bible")
    splits = load_bin_splits(str(tmp_path))
    assert (len(splits.train), len(splits.val)) == (500, 50)
    with pytest.raises(DataError, match="499"):
        load_bin_splits(str(tmp_path), model_vocab=300)
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="odd.bin"):
        open_bin(tmp_path / "odd.bin")
    with pytest.raises(DataError, match="nothere.bin"):
        open_bin(tmp_path / "nothere.bin")


# ----------------------------------------------------------------------------- batches


def test_batch_windows_are_disjoint_and_shifted() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    stream = BatchStream(tokens, seq_len=7, micro_batch=5)
    assert stream.n_windows == 125
    starts = []
    for _ in range(25):  # exactly one epoch
        x, y = next(stream)
        assert x.shape == (5, 7) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)
        starts += x[:, 0].tolist()
    assert starts == list(range(0, 1000, 8))  # in order, windows of seq_len+1, no overlap
    assert stream.epoch == 1
    assert next(stream)[0][0, 0].item() == 0  # wrapped around


def test_batches_wrap_mid_batch_when_the_epoch_ends() -> None:
    stream = BatchStream(np.arange(40, dtype=np.uint16), seq_len=3, micro_batch=3)  # 10 windows
    firsts = [next(stream)[0][:, 0].tolist() for _ in range(4)]
    assert firsts == [[0, 4, 8], [12, 16, 20], [24, 28, 32], [36, 0, 4]]


def test_state_dict_resume_is_exact() -> None:
    tokens = np.random.default_rng(0).integers(0, 500, 3000).astype(np.uint16)
    stream = BatchStream(tokens, seq_len=16, micro_batch=4)
    for _ in range(30):  # past the first wrap (176 windows)
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(5)]
    resumed = BatchStream(tokens, seq_len=16, micro_batch=4)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
    for (x, y), (rx, ry) in zip(expected, (next(resumed) for _ in range(5)), strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    with pytest.raises(DataError, match="resume"):
        BatchStream(tokens, seq_len=32, micro_batch=4).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_union_to_the_single_process_batch(world_size: int) -> None:
    tokens = np.arange(2003, dtype=np.uint32)  # 2003 // 9 = 222 windows: wraps mid-batch
    single = BatchStream(tokens, seq_len=8, micro_batch=4 * world_size)
    ranks = [BatchStream(tokens, 8, 4, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(25):
        x, y = next(single)
        parts = [next(s) for s in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert ranks[0].state_dict() == single.state_dict()


def test_too_little_data_raises() -> None:
    with pytest.raises(DataError, match="seq_len"):
        BatchStream(np.arange(8, dtype=np.uint16), seq_len=8, micro_batch=1)
    with pytest.raises(DataError, match="rank"):
        BatchStream(np.arange(100, dtype=np.uint16), seq_len=8, micro_batch=1, rank=2, world_size=2)
    with pytest.raises(DataError, match="validation"):
        val_batches(np.arange(8, dtype=np.uint16), seq_len=8, n_batches=1, batch_size=1)


def test_val_batches_are_the_first_windows() -> None:
    tokens = np.arange(100, dtype=np.uint16)  # 11 windows of 9
    batches = val_batches(tokens, seq_len=8, n_batches=3, batch_size=4)
    assert [b[0].shape[0] for b in batches] == [4, 4, 3]
    again = val_batches(tokens, seq_len=8, n_batches=3, batch_size=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    stream = BatchStream(tokens, seq_len=8, micro_batch=4)
    assert torch.equal(next(stream)[0], batches[0][0])
    assert len(val_batches(tokens, seq_len=8, n_batches=1, batch_size=2)) == 1


def test_bible_end_to_end(bible: list[str], tmp_path: Path) -> None:
    tok = build_tokenizer("bpe", bible, 2048, cache_dir=tmp_path)
    assert tok.vocab_size == 2048
    splits = prepare_tokens(bible, tok, tmp_path, val_fraction=0.05, model_vocab=2048)
    assert tok.decode(splits.train[:40].tolist()).startswith("Genesis 1\nIn the beginning")
    assert splits.val[0] == tok.bos_id and splits.val[-1] == tok.eos_id
    x, y = next(BatchStream(splits.train, seq_len=128, micro_batch=2))
    assert int(x.max()) < 2048
