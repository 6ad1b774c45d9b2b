"""Activation memory against the loop count R, with and without per-loop checkpointing.

Memory is measured as the bytes of tensors autograd saves for backward during one forward pass
(counted once per storage through saved-tensor hooks: exact and independent of the allocator);
on CUDA the peak allocated memory of forward + backward is printed beside it. Target: R=10 with
checkpointing at most 1.3x R=2.

    python bench/memory_loops.py [--spec specs/tiny/cart_tiny.yaml] [--max-loops 12]
"""

from __future__ import annotations

import argparse

import torch
from _common import generated_model


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, loops: int) -> tuple[int, int | None]:
    """Bytes saved for backward by one forward (unique storages), and the CUDA peak if any."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, torch.roll(x, -1, 1), loops=loops)
    loss.backward()
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if x.is_cuda else None
    return sum(seen.values()), peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="specs/tiny/cart_tiny.yaml")
    p.add_argument("--max-loops", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    resolved, model = generated_model(args.spec)
    model = model.to(args.device)
    x = torch.randint(
        0, resolved.spec.model.vocab_size, (args.batch, resolved.spec.seq_len), device=args.device
    )
    rows = {}
    print(
        f"{'R':>3} {'saved MB (plain)':>17} {'saved MB (ckpt)':>16} {'ckpt / plain':>13}"
        + ("  peak MB plain / ckpt" if x.is_cuda else "")
    )
    for loops in range(1, args.max_loops + 1):
        model.checkpoint_loops = False
        plain, peak_plain = saved_bytes(model, x, loops)
        model.checkpoint_loops = True
        ckpt, peak_ckpt = saved_bytes(model, x, loops)
        rows[loops] = (plain, ckpt)
        extra = f"  {peak_plain / 2**20:>9.1f} / {peak_ckpt / 2**20:.1f}" if peak_plain is not None else ""
        print(f"{loops:>3} {plain / 2**20:>17.2f} {ckpt / 2**20:>16.2f} {ckpt / plain:>12.2f}x{extra}")
    if 2 in rows and 10 in rows:
        ratio = rows[10][1] / rows[2][1]
        print(f"\nR=10 with checkpointing / R=2 with checkpointing: {ratio:.2f}x (target <= 1.3x)")
        print(f"R=10 without / R=2 without:                      {rows[10][0] / rows[2][0]:.2f}x")


if __name__ == "__main__":
    main()
