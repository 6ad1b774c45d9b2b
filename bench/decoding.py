"""Decoding speed with the KV cache against re-running the whole context for every token
(``cartspec sample --no-cache``), same model, greedy, side by side.

The window (model.max_seq_len) is raised to hold the prompt and every new token, so each row
measures incremental decoding, not a sliding window. Untrained weights: speed does not depend
on what the model has learned.

Each length is decoded --rounds times, cached and uncached in turn, so a burst of load on a
shared machine falls on both. The table gives the best round (timeit's convention: the fastest
run is the least disturbed one) and the median round, each with its speed-up. The cached step
is latency-bound and suffers from load far more than the compute-bound uncached one: a median
well below the best means the machine was busy during the run.

    python bench/decoding.py [--spec specs/tiny/cart_tiny.yaml] [--new 64,256,1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import generated_model

from cartspec.runtime.decode import Decoding, Sampling, decode


def tokens_per_s(model, prompt: list[int], new: int, vocab: int, window: int, cache: bool) -> float:
    t0 = time.perf_counter()
    found = decode(
        model,
        prompt,
        new,
        window=window,
        vocab=vocab,
        stop=None,
        sampling=Sampling(temperature=0),
        decoding=Decoding(cache=cache),
    )
    assert len(found.ids) == new
    return new / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="specs/tiny/cart_tiny.yaml")
    p.add_argument("--new", default="64,256,1024", help="new-token counts, comma-separated")
    p.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (decoding one token is latency-bound)"
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per length")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.new.split(",")]
    window = args.prompt + max(counts)
    resolved, model = generated_model(args.spec, [f"model.max_seq_len={window}"])
    model.eval()
    vocab = resolved.spec.model.vocab_size
    prompt = torch.randint(0, vocab, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{resolved.spec.name}, prompt {args.prompt} tokens, torch {torch.__version__}, {args.threads} threads"
    )
    print(f"machine load average (1, 5, 15 min): {load}")
    print(f"tokens/s over {args.rounds} interleaved rounds: best round | median round")
    print(
        f"{'new tokens':>10} {'cache':>8} {'no-cache':>9} {'speed-up':>9} |"
        f" {'cache':>8} {'no-cache':>9} {'speed-up':>9}"
    )
    for cache in (True, False):  # first calls allocate and warm the kernels: not measured
        tokens_per_s(model, prompt, 8, vocab, window, cache)
    for new in counts:
        rounds = [
            (
                tokens_per_s(model, prompt, new, vocab, window, cache=True),
                tokens_per_s(model, prompt, new, vocab, window, cache=False),
            )
            for _ in range(args.rounds)
        ]
        cached, full = zip(*rounds, strict=True)
        best = (max(cached), max(full))
        median = (statistics.median(cached), statistics.median(full))
        print(
            f"{new:>10} {best[0]:>8.1f} {best[1]:>9.1f} {best[0] / best[1]:>8.1f}x |"
            f" {median[0]:>8.1f} {median[1]:>9.1f} {median[0] / median[1]:>8.1f}x"
        )


if __name__ == "__main__":
    main()
