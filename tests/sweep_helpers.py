"""A sweep small enough to train for real in a test: d=32, raw bytes, seq 32, 10 steps per config
on a generated text corpus (about a second per config on a CPU)."""

from __future__ import annotations

import random
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = ROOT / "specs" / "tiny" / "cart_tiny.yaml"

WORDS = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light", "was", "good", "day"]


def write_corpus(path: Path, paragraphs: int = 120) -> Path:
    """Deterministic paragraphs of words (a .txt file splits into documents at blank lines)."""
    rng = random.Random(0)
    text = "\n\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(paragraphs)
    )
    path.write_text(text + "\n")
    return path


def write_mini_sweep(folder: Path, eval_loops: str = "[1, 2, 4]") -> Path:
    """A 4-config sweep: R in {2, 3} on a d=32 CART, its dense stored-parity baseline, and an
    ablation (no hyper-connection blend) of the R=3 config."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(folder / "corpus.txt")
    path = folder / "mini.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: mini
            base: {TINY_SPEC}
            set:
              model.vocab_size: 260
              model.d_model: 32
              model.head_dim: 16
              model.max_seq_len: 32
              blocks.prelude.layers: 1
              train.seq_len: 32
              train.micro_batch: 4
              train.steps: 10
              train.schedule: {{kind: cosine, warmup: 2, min_lr: 3.0e-4}}
              train.data: {{source: {corpus}, tokenizer: bytes, val_fraction: 0.1}}
              train.eval: {{interval: 5, batches: 4}}
              train.checkpoint: {{interval: 5, keep: 2}}
              train.log_interval: 1
            grid:
              blocks.core.loops: [2, 3]
            extra:
              - {{parity: {{match: stored}}, of: r3}}
              - {{name: no_hc, of: r3, set: {{blocks.core.state_mix: null}}}}
            eval_loops: {eval_loops}
            """
        )
    )
    return path


@contextmanager
def one_thread() -> Iterator[None]:
    """Train on one torch thread: a d=32 model gains nothing from a thread pool, and on a busy
    CPU the pool's hand-offs make it several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
