"""Data pipeline: corpora, tokenizers, token caches, .bin files and batch streams."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gen_helpers import BYTES_CART_SETS, assert_clean_error
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFCore
from tokenizers import models

from cartspec.runtime import corpus as corpus_mod
from cartspec.runtime import tokenizer as tokenizer_mod
from cartspec.runtime.atomic import atomic_writer
from cartspec.runtime.corpus import Corpus, open_corpus
from cartspec.runtime.data import (
    BatchStream,
    DataError,
    default_cache_dir,
    is_bin_source,
    load_bin_splits,
    open_bin,
    prepare_tokens,
    val_batches,
)
from cartspec.runtime.token_cache import HEADER_BYTES
from cartspec.runtime.tokenizer import (
    ByteTokenizer,
    build_tokenizer,
    load_tokenizer_file,
    train_bpe,
)

CART_TINY = Path(__file__).resolve().parents[1] / "specs" / "tiny" / "cart_tiny.yaml"
DOCS = ["first document", "second one, a bit longer", "third: naïve ✓", "fourth and last"]


@pytest.fixture(scope="module")
def bible() -> list[str]:
    return list(open_corpus("bible").documents())


@pytest.fixture(scope="module")
def small_bpe(bible: list[str]) -> tokenizer_mod.HFTokenizer:
    return train_bpe(bible[:100], 600)


@pytest.fixture
def docs(tmp_path: Path) -> Corpus:
    """DOCS as a .jsonl corpus."""
    return jsonl_corpus(tmp_path / "docs.jsonl", DOCS)


def jsonl_corpus(path: Path, docs: list[str]) -> Corpus:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return open_corpus(str(path))


def documents(source: Path | str) -> list[str]:
    return list(open_corpus(str(source)).documents())


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
    assert documents(tmp_path / "b.txt") == ["para one\nstill one", "  para two"]
    assert documents(tmp_path / "a.jsonl") == ["j1", "j2"]
    assert documents(tmp_path) == ["j1", "j2", "para one\nstill one", "  para two"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab \t\r\n\u2028é", max_size=40))
@example(text=" \na\n\n \n b\n ")  # one whitespace-only line at each end is kept
@example(text="\n \na\r\n\r\nb\n\n")
def test_txt_paragraphs_are_those_of_the_whole_text_split(text: str) -> None:
    """Read line by line, a .txt file gives the blocks the whole-file regex split gave (what
    earlier runs trained on)."""
    expected = [b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]
    assert list(corpus_mod._paragraphs(text.split("\n"))) == expected


@pytest.mark.parametrize("text", ["", "a", "a\n", "\n\n", "é\r\nb\n\nc", "x\n  "])
def test_lines_are_those_of_split(tmp_path: Path, text: str) -> None:
    (tmp_path / "t.txt").write_bytes(text.encode())
    assert list(corpus_mod._lines(tmp_path / "t.txt")) == text.split("\n")


def test_parquet_source_reads_the_text_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"row {i}" for i in range(2500)] + [None, "  ", "last"]
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=1000)
    (tmp_path / "a.txt").write_text("from text")
    assert documents(tmp_path / "b.parquet") == [*texts[:2500], "last"]
    assert documents(tmp_path) == ["from text", *texts[:2500], "last"]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r"a\.parquet: reading parquet needs pyarrow.*cartspec\[parquet\]"):
        documents(tmp_path / "a.parquet")


def write_bad_parquet(path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    if path.name == "notext.parquet":
        pq.write_table(pa.table({"body": ["x"]}), path)
    elif path.name == "ints.parquet":
        pq.write_table(pa.table({"text": [1, 2]}), path)
    else:
        path.write_bytes(b"PAR1 this is not parquet")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "data source not found"),
        ("empty.txt", b"\n\n  \n", "empty corpus"),
        ("latin1.txt", b"ok\ncaf\xe9", "not valid UTF-8 (byte 6)"),
        (
            "bad.jsonl",
            b'{"text": "ok"}\n{"txt": "no"}\n',
            'bad.jsonl:2: expected a JSON object with a "text"',
        ),
        ("notes.md", b"# notes", "unsupported data file"),
        ("empty_folder", "dir", "no .txt, .jsonl or .parquet file in this folder"),
        ("garbage.parquet", "parquet", "not a readable parquet file"),
        ("notext.parquet", "parquet", 'no "text" column (columns: body)'),
        ("ints.parquet", "parquet", 'the "text" column holds int64'),
    ],
)
def test_bad_sources_raise_one_line_naming_the_path(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
        (path / "readme.md").write_text("nothing usable")
    elif content == "parquet":
        write_bad_parquet(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(name)) as info:
        documents(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_corpus_signature_follows_size_and_mtime_not_content_reads(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("abc")
    first = open_corpus(str(path))
    assert open_corpus(str(path)).signature == first.signature
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    touched = open_corpus(str(path))
    assert touched.signature != first.signature and touched.identity == first.identity
    assert open_corpus(str(tmp_path)).identity != first.identity


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
    corpus = jsonl_corpus(tmp_path / "c.jsonl", bible[:30])
    first = build_tokenizer("bpe", corpus, 400, cache_dir=tmp_path)
    again = build_tokenizer("bpe", corpus, 400, cache_dir=tmp_path)
    assert calls == [400]
    assert again.fingerprint == first.fingerprint == real(bible[:30], 400).fingerprint
    assert again.encode("And God said") == first.encode("And God said")
    build_tokenizer("bpe", corpus, 500, cache_dir=tmp_path)
    assert calls == [400, 500]
    (cached,) = (tmp_path / "tokenizers").glob("*-400-*.json")
    cached.write_text("{truncated")
    assert build_tokenizer("bpe", corpus, 400, cache_dir=tmp_path).fingerprint == first.fingerprint
    assert calls == [400, 500, 400]


def test_bpe_trains_from_a_stream(bible: list[str]) -> None:
    """The trainer takes an iterator: the same documents streamed give the same tokenizer."""
    assert train_bpe(iter(bible[:50]), 400).fingerprint == train_bpe(bible[:50], 400).fingerprint
    with pytest.raises(DataError, match="empty corpus"):
        train_bpe(iter([]), 400)


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


def test_prepare_tokens_wraps_documents_and_holds_out_the_tail(docs: Corpus, tmp_path: Path) -> None:
    tok = CountingTokenizer()
    splits = prepare_tokens(docs, tok, tmp_path, val_fraction=0.25, model_vocab=300)
    assert splits.train.dtype == np.uint16
    assert splits.train.tolist() == wrapped(tok, DOCS[:3])
    assert splits.val.tolist() == wrapped(tok, DOCS[3:])
    tiny = prepare_tokens(docs, tok, tmp_path, val_fraction=0.01)
    assert tiny.val.tolist() == wrapped(tok, DOCS[3:])  # at least one document held out
    half = prepare_tokens(docs, tok, tmp_path, val_fraction=0.5)
    assert half.val.tolist() == wrapped(tok, DOCS[2:])
    assert tok.calls == 1  # another val_fraction cuts the same tokens at another document end


def test_prepare_tokens_uses_uint32_for_large_vocabularies(docs: Corpus, tmp_path: Path) -> None:
    tok = CountingTokenizer(vocab_size=70_000)
    splits = prepare_tokens(docs, tok, tmp_path)
    assert splits.train.dtype == np.uint32
    assert splits.train.tolist() + splits.val.tolist() == wrapped(tok, DOCS)


def test_documents_are_streamed_in_chunks(docs: Corpus, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("cartspec.runtime.token_cache._ENCODE_CHARS", 20)
    tok = CountingTokenizer()
    splits = prepare_tokens(docs, tok, tmp_path, val_fraction=0.25)
    assert tok.calls == 2  # 14 + 24 characters, then 14 + 15: each chunk passes 20
    assert splits.train.tolist() == wrapped(tok, DOCS[:3]) and splits.val.tolist() == wrapped(tok, DOCS[3:])


def cache_file(cache: Path) -> Path:
    (path,) = (cache / "tokens").iterdir()
    return path


def test_unchanged_corpus_is_reused_without_reading_it(
    docs: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = CountingTokenizer()
    first = prepare_tokens(docs, tok, tmp_path / "cache")
    stamp = cache_file(tmp_path / "cache").stat().st_mtime_ns

    def unreadable(path: Path) -> None:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(corpus_mod, "open_regular", unreadable)
    again = prepare_tokens(open_corpus(docs.name), tok, tmp_path / "cache")
    assert tok.calls == 1
    assert cache_file(tmp_path / "cache").stat().st_mtime_ns == stamp
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)


def test_touched_or_changed_corpus_is_tokenized_again_in_place(docs: Corpus, tmp_path: Path, capsys) -> None:
    tok = CountingTokenizer()
    prepare_tokens(docs, tok, tmp_path / "cache")
    path = Path(docs.name)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))  # same bytes, a new mtime
    prepare_tokens(open_corpus(docs.name), tok, tmp_path / "cache")
    assert tok.calls == 2
    changed = jsonl_corpus(path, ["new one", "and two"])
    assert prepare_tokens(changed, tok, tmp_path / "cache").val.tolist() == wrapped(tok, ["and two"])
    assert tok.calls == 3
    cache_file(tmp_path / "cache")  # one file per corpus and tokenizer, rewritten
    assert capsys.readouterr().err == ""  # a changed corpus is not a damaged cache


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:-2]
    elif how == "extended":
        data += b"\0" * 8
    elif how == "same_size":
        data[HEADER_BYTES + 4 : HEADER_BYTES + 8] = b"\xff\xff\xff\xff"
    elif how == "bad_magic":
        data[:8] = b"NOTTOKS!"
    elif how == "wrong_width":
        data[12:16] = (4).to_bytes(4, "little")
    elif how == "short_header":
        data = data[:40]
    else:  # empty
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("truncated", "bytes where its header promises"),
        ("extended", "bytes where its header promises"),
        ("same_size", "do not match their sha256"),
        ("bad_magic", "bad magic"),
        ("wrong_width", "4-byte tokens, expected 2"),
        ("short_header", "40 bytes, shorter than its header"),
        ("empty", "0 bytes, shorter than its header"),
    ],
)
def test_damaged_token_cache_is_rebuilt_with_one_line(
    docs: Corpus, tmp_path: Path, capsys, how: str, problem: str
) -> None:
    tok = CountingTokenizer()
    expected = prepare_tokens(docs, tok, tmp_path).train.tolist()
    path = cache_file(tmp_path)
    damage(path, how)
    assert prepare_tokens(docs, tok, tmp_path).train.tolist() == expected
    assert tok.calls == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0] and problem in err[0] and "rebuilding" in err[0], err
    assert prepare_tokens(docs, tok, tmp_path).train.tolist() == expected
    assert tok.calls == 2 and capsys.readouterr().err == ""  # the rebuilt file is reused
    assert list((tmp_path / "tokens").iterdir()) == [path]  # no temporary file left behind


def test_another_cache_format_version_is_rebuilt_not_read(docs: Corpus, tmp_path: Path, capsys) -> None:
    tok = CountingTokenizer()
    expected = prepare_tokens(docs, tok, tmp_path).train.tolist()
    path = cache_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert prepare_tokens(docs, tok, tmp_path).train.tolist() == expected
    assert tok.calls == 2 and capsys.readouterr().err == ""


def test_tokenizer_larger_than_model_vocab_raises(docs: Corpus, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="258.*100"):
        prepare_tokens(docs, ByteTokenizer(), tmp_path, model_vocab=100)


def test_single_document_cannot_be_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2"):
        prepare_tokens(jsonl_corpus(tmp_path / "one.jsonl", DOCS[:1]), ByteTokenizer(), tmp_path)


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
    corpus = open_corpus("bible")
    tok = build_tokenizer("bpe", corpus, 2048, cache_dir=tmp_path)
    assert tok.vocab_size == 2048
    splits = prepare_tokens(corpus, tok, tmp_path, val_fraction=0.05, model_vocab=2048)
    assert tok.decode(splits.train[:40].tolist()).startswith("Genesis 1\nIn the beginning")
    assert splits.val[0] == tok.bos_id and splits.val[-1] == tok.eos_id
    x, y = next(BatchStream(splits.train, seq_len=128, micro_batch=2))
    assert int(x.max()) < 2048


# ----------------------------------------------------------------------------- at the command line


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("gone.txt", None, "data source not found"),
        ("blank.txt", b"\n  \n\n", "empty corpus: no text found in"),
        ("broken.parquet", b"PAR1 not parquet PAR1", "not a readable parquet file"),
        ("odd.bin", b"\x01\x02\x03", "size 3 bytes is not a non-empty whole number of uint16"),
        ("nothing", "dir", "no .txt, .jsonl or .parquet file in this folder"),
    ],
)
def test_train_refuses_bad_data_in_one_located_line(
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    content: bytes | str | None,
    fragment: str,
) -> None:
    monkeypatch.setenv("CARTSPEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / name
    if content == "dir":
        source.mkdir()
        (source / "notes.md").write_text("not data")
    elif content is not None:
        source.write_bytes(content)
    sets = [f"--set={s}" for s in (*BYTES_CART_SETS, f"train.data.source={source}")]
    result = cli("train", str(CART_TINY), "--out", str(tmp_path / "run"), "--device", "cpu", *sets)
    assert_clean_error(result, str(source), fragment)
