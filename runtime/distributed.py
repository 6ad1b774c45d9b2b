"""Data parallelism on PyTorch's own engine: torchrun processes, DDP or FSDP2, rank-0 duties.

Launched by ``torchrun --nproc-per-node N -m cartspec train ...`` (any of torchrun's rendezvous
flags work, so several machines too) or by ``cartspec train --nproc N``, which runs torchrun
itself. The global batch of a spec, ``micro_batch x grad_accum`` sequences, is the same at any
world size: each of the W ranks runs ``grad_accum / W`` micro-batches per step (or, when
``grad_accum`` does not divide, micro-batches of ``micro_batch / W`` sequences) on its own windows
of the data, and the gradients are averaged across ranks once per step.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cartspec.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or size == 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(world: World, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU); each rank takes its local GPU."""
    if not world.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # the others wait on rank 0 while it builds the tokenizer and token cache (main_first)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
            timeout=datetime.timedelta(hours=1),
        )
    return device


def teardown(world: World, together: bool = False) -> None:
    """Leave the process group. After a run every rank finished, ``together`` waits for all of
    them first: a rank that destroys the group while another still completes a collective can
    abort at exit (gloo's "terminate called without an active exception"). After an error a rank
    leaves at once, since the others may never arrive."""
    if world.active and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def split_batch(micro_batch: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """Per-rank (micro_batch, grad_accum) that keep the spec's global batch: the micro-batches
    of a step are dealt out across ranks when they divide evenly, else each micro-batch is."""
    if grad_accum % world_size == 0:
        return micro_batch, grad_accum // world_size
    if micro_batch % world_size == 0:
        return micro_batch // world_size, grad_accum
    raise UserError(
        f"the global batch (micro_batch {micro_batch} x grad_accum {grad_accum}) does not split over "
        f"{world_size} processes: make grad_accum or micro_batch a multiple of {world_size}"
    )


def check_devices(nproc: int, device: torch.device) -> None:
    """One GPU per process on CUDA; any number of processes share the CPU."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc {nproc}: this machine has {torch.cuda.device_count()} CUDA devices (one process per GPU)"
        )


def wrap(model: nn.Module, world: World, device: torch.device, strategy: str) -> nn.Module:
    """Put a freshly built CPU model on ``device`` for this world: whole (one process, or DDP
    in every process) or sharded by FSDP2 (``fully_shard`` on each of the model's distinct
    blocks, so a shared core is one unit that every loop reads, then on the root).

    A sharded model never exists whole on the device: each block moves there as it is sharded.
    Call before building the optimizer, which must see the sharded parameters.
    """
    if not world.active or strategy == "ddp":
        model = model.to(device)
    if not world.active:
        return model
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world.size,))
    for block in model.blocks():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the cross-rank gradient reduction on all but the last micro-batch of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        return model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums of per-rank scalars over all ranks (in float64)."""
    if not world.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


class OtherRankFailed(UserError):
    """Raised on the ranks that waited for rank 0 when rank 0's part failed (it reports why)."""


def main_first(world: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (which then find caches and files made).

    If rank 0 fails, the others stop too instead of waiting for it forever.
    """
    if not world.active:
        return fn()
    error: BaseException | None = None
    if world.is_main:
        try:
            result = fn()
        except BaseException as e:  # re-raised below, after telling the other ranks
            error = e
    failed = [error is not None]
    dist.broadcast_object_list(failed, src=0)  # on the backend's own device (nccl: the GPU)
    if error is not None:
        raise error
    if failed[0]:
        raise OtherRankFailed("rank 0 failed")
    return result if world.is_main else fn()


@contextlib.contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Whole (unsharded) root parameters for the duration, e.g. to read the gate's statistics."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m cartspec ARGV`` in ``nproc`` processes on this machine through torchrun.

    Returns the first failed rank's exit code (2 for a user error, which rank 0 has printed),
    128 + the signal number when interrupted, else 0. torchrun's own logging is silenced: the
    workers say what went wrong.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:  # what torchrun would choose, without its banner
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "cartspec", *argv]
    )
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        return next((c for c in codes if c > 0), 1)
    except SignalException as e:  # the workers were stopped with it; checkpoints on disk are whole
        return 128 + int(e.sigval)
    return 0
