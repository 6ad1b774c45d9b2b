"""Training tokens/s and MFU of shipped specs on one CUDA GPU (bf16 autocast, torch.compile).

MFU = tokens/s x 6 x effective parameters (paper convention) / the GPU's peak dense bf16 FLOP/s,
the CART paper's definition. Its RTX 3090 figure is printed beside ours. The model compiles as the
runtime compiles it (runtime/torch_compile.py): each block once by default, ``--compile model`` for
one whole-model graph, ``--compile off`` for eager.

    python bench/gpu_mfu.py specs/cart_d1024.yaml specs/dense_d1024.yaml [--steps 20]
        [--compile off|blocks|model] [--compile-mode max-autotune]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import generated_model

from cartspec.accounting import account
from cartspec.runtime.torch_compile import SCOPES, compile_model
from cartspec.throughput import peak_flops

PAPER = {"cart_d1024": (32_393, 0.49), "dense_d1024": None}  # RTX 3090, tokens/s and MFU, R=6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", choices=SCOPES, default="blocks", help="compile scope (default blocks)")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_mfu.py needs a CUDA GPU")
    gpu = torch.cuda.get_device_name()
    peak = peak_flops(gpu)
    if peak is None:
        print(
            f"warning: no peak-FLOPs entry for {gpu!r}; MFU is not reported (add it to cartspec/throughput.py)"
        )
    torch.backends.cuda.matmul.allow_tf32 = True
    print(
        f"GPU: {gpu}, peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s, torch {torch.__version__}, "
        f"compile {args.compile} ({args.compile_mode})"
    )
    print(f"{'spec':<16} {'eff. params':>12} {'tokens/s':>10} {'MFU':>6}   paper (RTX 3090)")
    for spec in args.specs:
        measure(spec, args, peak)
        torch.cuda.empty_cache()


def measure(spec: str, args: argparse.Namespace, peak: float | None) -> None:
    """Time ``args.steps`` training steps of one spec after an untimed warm-up and print a row."""
    resolved, model = generated_model(spec)
    model = model.cuda()
    n_eff = account(resolved.graph).effective_paper
    T = resolved.spec.seq_len
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = compile_model(model, args.compile, args.compile_mode)
    x = torch.randint(0, resolved.spec.model.vocab_size, (args.batch, T), device="cuda")
    y = torch.roll(x, -1, 1)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = step_model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):  # compilation and warm-up, untimed
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    tps = args.steps * args.batch * T / (time.perf_counter() - t0)
    mfu = f"{tps * 6 * n_eff / peak:>6.1%}" if peak else "   n/a"
    ref = PAPER.get(resolved.spec.name)
    paper = f"{ref[0]:,} tok/s, {ref[1]:.0%} MFU" if ref else "-"
    print(f"{resolved.spec.name:<16} {n_eff:>12,} {tps:>10,.0f} {mfu}   {paper}")


if __name__ == "__main__":
    main()
