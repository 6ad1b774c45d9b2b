"""Data parallelism through torchrun: process group, DDP/FSDP2 wrapping, rank-0 duties.

Launched by ``torchrun --nproc_per_node N -m cartspec train ...`` (or ``cartspec train --nproc
N``, which execs torchrun). The global batch of a spec, ``micro_batch x grad_accum`` sequences,
stays the same at any world size: each of the W ranks runs ``grad_accum / W`` micro-batches per
step on its own, non-overlapping windows, and DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cartspec.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(device_name: str) -> tuple[World, torch.device]:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on CUDA)."""
    from cartspec.runtime.train import pick_device

    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World(), pick_device(device_name)
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def local_accumulation(grad_accum: int, world: World) -> int:
    """Micro-batches per rank and step that keep the spec's global batch."""
    if grad_accum % world.size:
        raise UserError(
            f"train.grad_accum {grad_accum} is not divisible by {world.size} processes; "
            "the global batch (micro_batch x grad_accum) must split evenly across ranks"
        )
    return grad_accum // world.size


def wrap(model: nn.Module, world: World, device: torch.device, strategy: str) -> nn.Module:
    """DDP (every rank holds the whole model) or FSDP2 (``fully_shard`` per block, the shared
    core as one unit, then the root)."""
    if not world.active:
        return model
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for name in ("stack", "prelude", "coda"):
        for layer in getattr(model, name, []):
            fully_shard(layer)
    core = getattr(model, "core", None)
    if isinstance(core, nn.ModuleList):
        for block in core:
            fully_shard(block)
    elif core is not None:
        fully_shard(core)  # one unit: every loop reads the same shards
    fully_shard(model)
    return model


def no_sync(model: nn.Module, last_micro_batch: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    return contextlib.nullcontext()


def mean(value: float, world: World, device: torch.device) -> float:
    """The mean of a per-rank scalar over all ranks."""
    if not world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "cartspec", *argv]
    return subprocess.call(cmd)
