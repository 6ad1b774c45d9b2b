"""Training throughput of generated models against hand-written ones (bench/reference_models.py).

Same sizes, same batches, same AdamW, float32 on CPU (bf16 on CUDA). Prints seconds per step and
the ratio generated/reference speed (target >= 0.97), eager and, with --compile, compiled. Both
sides compile the same way: mode ``blocks`` (``--compile``) compiles each block once with
runtime/torch_compile.py, the reference models listing their layers and core in ``blocks()`` too;
mode ``model`` (``--compile model``) compiles each whole model as one graph.

    python bench/throughput.py [--steps 10] [--compile [blocks|model]] [--device cpu]
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from functools import partial

import torch
from _common import generated_model, median_time
from reference_models import HandCART, HandDense

from cartspec.runtime.torch_compile import compile_model

SPECS = {"cart_tiny": "specs/tiny/cart_tiny.yaml", "dense_tiny": "specs/tiny/dense_tiny.yaml"}


def reference_for(resolved) -> torch.nn.Module:
    m, b = resolved.spec.model, resolved.spec.blocks
    torch.manual_seed(0)
    if b.stack is not None:
        return HandDense(
            m.vocab_size, m.d_model, m.head_dim, b.stack.layers, m.max_seq_len, m.ffn.multiple_of
        )
    return HandCART(
        m.vocab_size,
        m.d_model,
        m.head_dim,
        b.prelude.layers,
        b.core.loops,
        b.coda.layers,
        m.max_seq_len,
        m.ffn.multiple_of,
    )


def step_fn(model, batch, device, generated: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = batch
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step():
        with ctx:
            loss = model(x, y)[1] if generated else model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model and mode")
    p.add_argument(
        "--compile",
        nargs="?",
        const="blocks",
        choices=["blocks", "model"],
        help="also time compiled models: each block once (blocks, the default) or the whole model",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    print(
        f"{'model':<11} {'mode':<9} {'params gen/ref':>21} {'generated s/step':>17} {'reference s/step':>17} {'speed ratio':>11}"
    )
    for name, path in SPECS.items():
        resolved, gen = generated_model(path)
        ref = reference_for(resolved)
        gen, ref = gen.to(device), ref.to(device)
        n_gen, n_ref = (sum(p.numel() for p in m.parameters()) for m in (gen, ref))
        t = resolved.spec.train
        g = torch.Generator().manual_seed(0)
        x = torch.randint(
            0, resolved.spec.model.vocab_size, (t.micro_batch, resolved.spec.seq_len), generator=g
        ).to(device)
        batch = (x, torch.roll(x, -1, 1))
        modes = [("eager", lambda m: m)]
        if args.compile:  # in place for blocks: run after eager
            modes.append((args.compile, partial(compile_model, scope=args.compile)))
        for mode, wrap in modes:
            times = median_time(
                {
                    "gen": step_fn(wrap(gen), batch, device, True),
                    "ref": step_fn(wrap(ref), batch, device, False),
                },
                repeats=args.steps,
                warmup=2 if mode == "eager" else 3,
            )
            ratio = times["ref"] / times["gen"]
            print(
                f"{name:<11} {mode:<9} {n_gen:>10,}/{n_ref:<10,} {times['gen']:>17.4f} {times['ref']:>17.4f} {ratio:>10.3f}x"
            )


if __name__ == "__main__":
    main()
