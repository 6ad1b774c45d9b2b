"""Peak memory of preparing a corpus against its size: it must not grow with the corpus.

Generates synthetic corpora (default 20 MB and 200 MB of .jsonl, words drawn from a fixed
Zipf-weighted lexicon) in a temporary folder, then prepares each as ``cartspec train`` does
(``prepare_data``: the BPE tokenizer trained at the spec's vocab size, then the token cache) in
a fresh subprocess that reports its own peak RSS (``ru_maxrss``). A second subprocess prepares
the same corpus again, which must reuse both caches without reading it. Target: the largest
corpus peaks within 150 MB of the smallest.

    python bench/data_memory.py [--sizes 20,200] [--format jsonl|txt|parquet] [--spec specs/tiny/cart_tiny.yaml]

BPE training keeps one count per distinct word, so its memory follows the vocabulary of the
text (which a real corpus grows slowly), not its size; the fixed lexicon keeps that equal here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LEXICON_WORDS = 20_000


def write_corpus(path: Path, megabytes: int, fmt: str, seed: int = 0) -> int:
    """Documents of 50 to 800 words until ``megabytes`` MB are written; returns their count."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lexicon = np.array(
        ["".join(rng.choice(letters, size=n)) for n in rng.integers(2, 11, size=LEXICON_WORDS)], dtype=object
    )
    weights = 1.0 / np.arange(1, LEXICON_WORDS + 1)  # Zipf: word k is about 1/k as frequent as the first
    weights /= weights.sum()
    target, written, docs = megabytes * 1_000_000, 0, []
    n_docs = 0
    sink = _Sink(path, fmt)
    while written < target:
        words = lexicon[rng.choice(LEXICON_WORDS, size=int(rng.integers(50, 801)), p=weights)]
        doc = " ".join(words) + "."
        docs.append(doc)
        written += len(doc) + 13  # about the JSON framing of one line
        n_docs += 1
        if len(docs) == 2000:
            sink.write(docs)
            docs = []
    sink.write(docs)
    sink.close()
    return n_docs


class _Sink:
    """Appends batches of documents to a .jsonl, .txt (blank-line separated) or .parquet file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.fmt = fmt
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._pa = pa
            self._writer = pq.ParquetWriter(path, pa.schema([("text", pa.string())]))
        else:
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, docs: list[str]) -> None:
        if self.fmt == "parquet":
            self._writer.write_table(self._pa.table({"text": docs}))
        elif self.fmt == "jsonl":
            self._file.write("".join(json.dumps({"text": d}) + "\n" for d in docs))
        else:
            self._file.write("".join(d + "\n\n" for d in docs))

    def close(self) -> None:
        (self._writer if self.fmt == "parquet" else self._file).close()


def child(spec: str, source: str, cache: str) -> None:
    """Prepare ``source`` as training would; print one JSON line with the peak RSS."""
    import resource

    from cartspec.resolve import resolve
    from cartspec.runtime.data import prepare_data

    resolved = resolve(REPO / spec, [f"train.data.source={source}"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    _, splits = prepare_data(resolved.spec, Path(cache))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tokens = len(splits.train) + len(splits.val)
    print(json.dumps({"peak_kib": peak, "imports_kib": before, "seconds": seconds, "tokens": tokens}))


def measure(spec: str, source: Path, cache: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", spec, str(source), str(cache)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20,200", help="corpus sizes in MB, comma-separated")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "txt", "parquet"])
    p.add_argument("--spec", default="specs/tiny/cart_tiny.yaml")
    p.add_argument("--child", nargs=3, metavar=("SPEC", "SOURCE", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cartspec-data-memory-") as tmp:
        for mb in sizes:
            corpus = Path(tmp) / f"corpus_{mb}mb.{args.format}"
            n_docs = write_corpus(corpus, mb, args.format)
            cache = Path(tmp) / f"cache_{mb}"
            first = measure(args.spec, corpus, cache)
            again = measure(args.spec, corpus, cache)
            rows.append((mb, os.path.getsize(corpus), n_docs, first, again))
    print(
        f"spec {args.spec}, .{args.format} corpora, {LEXICON_WORDS:,}-word lexicon, python {sys.version.split()[0]}"
    )
    print(f"machine load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{'corpus':>8} {'bytes':>13} {'docs':>8} {'tokens':>11} {'peak RSS':>9} {'after imports':>14}"
        f" {'seconds':>8} {'reuse peak':>11} {'reuse s':>8}"
    )
    for mb, size, n_docs, first, again in rows:
        print(
            f"{mb:>6}MB {size:>13,} {n_docs:>8,} {first['tokens']:>11,} {first['peak_kib'] / 1024:>7.0f}MB"
            f" {first['imports_kib'] / 1024:>12.0f}MB {first['seconds']:>8.1f}"
            f" {again['peak_kib'] / 1024:>9.0f}MB {again['seconds']:>8.2f}"
        )
    low, high = rows[0][3]["peak_kib"] / 1024, rows[-1][3]["peak_kib"] / 1024
    verdict = "within" if high - low <= 150 else "NOT within"
    print(
        f"peak RSS {rows[-1][0]}MB - {rows[0][0]}MB corpus: {high - low:+.0f} MB ({verdict} the 150 MB target)"
    )


if __name__ == "__main__":
    main()
