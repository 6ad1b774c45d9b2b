"""What the frozen anchor saves: time per core loop with K, V computed once (CART) against the
unfrozen-KV ablation (K, V recomputed from each loop's input), same weights otherwise.

The per-loop time is the slope of forward+backward time over R (two loop counts), so the prelude,
coda and head cancel out.

    python bench/anchor_saving.py [--spec specs/tiny/cart_tiny.yaml] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch
from _common import generated_model, median_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="specs/tiny/cart_tiny.yaml")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--loops", default="2,8", help="the two loop counts whose difference gives the slope")
    args = p.parse_args()
    lo, hi = (int(v) for v in args.loops.split(","))
    models = {
        "frozen K, V (CART)": generated_model(args.spec)[1],
        "unfrozen K, V (ablation X)": generated_model(args.spec, ["blocks.anchor.recompute=every_loop"])[1],
    }
    resolved = generated_model(args.spec)[0]
    x = torch.randint(0, resolved.spec.model.vocab_size, (args.batch, resolved.spec.seq_len))

    def run(model, loops):
        def fn():
            _, loss = model(x, torch.roll(x, -1, 1), loops=loops)
            loss.backward()
            model.zero_grad(set_to_none=True)

        return fn

    fns = {(name, r): run(m, r) for name, m in models.items() for r in (lo, hi)}
    times = median_time(fns, repeats=args.repeats)
    per_loop = {name: (times[(name, hi)] - times[(name, lo)]) / (hi - lo) for name in models}
    print(f"{'variant':<28} {'ms/loop (fwd+bwd)':>18}")
    for name, t in per_loop.items():
        print(f"{name:<28} {t * 1e3:>18.2f}")
    frozen, unfrozen = per_loop.values()
    print(f"\nunfrozen / frozen time per loop: {unfrozen / frozen:.2f}x")


if __name__ == "__main__":
    main()
