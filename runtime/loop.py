"""The one training loop for every generated model, in one process or as a rank of a torchrun job.

A run writes its folder (see rundir) as it goes: checkpoints at the spec's interval, a metrics
line at each log or evaluation step (also as TensorBoard events and, in a batch job's log, as a
plain line on stderr), and at the start the files that let it be read back later.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cartspec.errors import UserError
from cartspec.resolve import Resolved
from cartspec.runtime import checkpoint, distributed, events, init_from, rundir
from cartspec.runtime.data import BatchStream, TokenSplits, default_cache_dir, prepare_data, val_batches
from cartspec.runtime.depth import DepthDraws
from cartspec.runtime.device import autocast, machine, peak_memory_mb, pick_device
from cartspec.runtime.evaluate import evaluate
from cartspec.runtime.generated import compiled_module
from cartspec.runtime.optim import build_optimizer, lr_at
from cartspec.runtime.progress import Progress, opening_line
from cartspec.runtime.tokenizer import Tokenizer
from cartspec.runtime.torch_compile import compile_model
from cartspec.schedule import schedule
from cartspec.throughput import mfu, peak_flops, train_flops_per_token


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Options:
    out: Path | None = None
    resume: str | None = None  # None: fresh run; "auto": newest valid checkpoint if any; else a path
    device: str = "auto"
    until: int | None = None  # stop after this step (the schedule still spans train.steps)
    cache_dir: Path | None = None
    progress: str = "bar"  # bar (a terminal), lines (a batch job's log) or off; see progress.MODES
    init_from: str | None = None  # a run or checkpoint folder whose weights a fresh run starts from
    tensorboard: bool = False  # TensorBoard event files beside metrics.jsonl
    peak_tflops: float | None = None  # one device's peak, for the MFU of a device not in the table


@dataclass
class Summary:
    name: str
    run_dir: str
    steps: int
    tokens: int
    train_loss: float | None  # None: no step was trained and none was recorded
    val_loss: float | None
    val_ppl: float | None
    rho: float | None
    stored: int
    effective: int
    wall_s: float
    tokens_per_s: float


@dataclass
class _Run:
    """What a run steps with, built once before its first step."""

    resolved: Resolved
    run_dir: Path
    world: distributed.World
    device: torch.device
    ctx: AbstractContextManager  # the precision forward passes run in
    model: nn.Module  # what is checkpointed and asked for its statistics
    compiled: nn.Module  # what runs: the model itself, or its whole-model torch.compile wrapper
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    val: list[tuple[torch.Tensor, torch.Tensor]]
    accum: int  # micro-batches per step on this rank
    state: dict[str, Any]  # what every checkpoint records beside the weights
    depth: DepthDraws | None  # None: every step runs the spec's R loops with full backprop
    flops_per_token: float  # training FLOPs per token (accounting's, at train.seq_len, head included)
    peak: float | None  # one device's peak FLOP/s; None: no MFU


def train(resolved: Resolved, options: Options = Options()) -> Summary:
    """Train ``resolved`` in this process, or as one rank of a torchrun job (see distributed)."""
    world = distributed.world_from_env()
    device = distributed.setup(world, pick_device(options.device))
    try:
        summary = _train(resolved, options, world, device)
    except BaseException:
        distributed.teardown(world)  # at once: the other ranks may never reach a barrier
        raise
    distributed.teardown(world, together=True)
    return summary


def _train(resolved: Resolved, options: Options, world: distributed.World, device: torch.device) -> Summary:
    t = resolved.spec.train
    batch = distributed.split_batch(t.micro_batch, t.grad_accum, world.size)  # before any work
    if options.init_from is not None and options.resume is not None:
        raise UserError("--init-from starts a new run from trained weights, --resume continues one: pick one")
    if options.tensorboard:
        events.require()
    if t.depth.per == "sequence" and t.parallel == "fsdp" and world.size > 1:
        raise UserError(  # FSDP gathers a block's weights on every rank at each call, together
            "train.depth.per: sequence runs each rank's own loop count; under FSDP every rank must run "
            "the same blocks: use train.parallel: ddp, or train.depth.per: step"
        )
    run_dir = _open_run_dir(rundir.run_dir_for(resolved, options.out))
    with rundir.locked(run_dir) if world.is_main else nullcontext():  # rank 0 writes the folder
        return _train_locked(resolved, options, world, device, batch, run_dir)


def _train_locked(
    resolved: Resolved,
    options: Options,
    world: distributed.World,
    device: torch.device,
    batch: tuple[int, int],
    run_dir: Path,
) -> Summary:
    """The run, once this process holds its folder."""
    spec, t = resolved.spec, resolved.spec.train
    resume_from = _resume_path(run_dir, options.resume, announce=world.is_main, init=options.init_from)
    # everything that can refuse a resume before data is prepared does so here
    saved = _check_resumable(resume_from, resolved.sha256) if resume_from is not None else None
    start = saved["step"] if saved is not None else 0
    stop = min(t.steps, options.until) if options.until is not None else t.steps
    if resume_from is not None:
        if options.resume != "auto":  # auto is the newest already
            _check_one_line(run_dir, resume_from, start)
        _check_stop(resume_from, start, t.steps, options.until)
    source = None
    if options.init_from is not None:  # refused before any data is prepared or file written
        source = init_from.find(options.init_from, resolved, announce=world.is_main)
    progress_mode = options.progress if world.is_main else "off"
    if progress_mode != "off":
        print(
            opening_line(resolved, device, world.size, start, stop, options.init_from),
            file=sys.stderr,
            flush=True,
        )
    cache_dir = options.cache_dir or default_cache_dir()
    tokenizer, splits = distributed.main_first(world, lambda: prepare_data(spec, cache_dir))
    state: dict[str, Any] = {
        "architecture_sha256": resolved.sha256,
        "tokenizer": tokenizer.fingerprint if tokenizer is not None else None,
    }
    if resume_from is not None and saved is not None:  # before model.py is rewritten: a refused
        _check_same_tokens(resume_from, saved, state["tokenizer"])  # resume leaves the run as it was
    _record_source(state, source, saved, world.is_main)
    peak = options.peak_tflops * 1e12 if options.peak_tflops is not None else _device_peak(device)
    weights = source.checkpoint if source is not None else None
    run = _build_run(resolved, run_dir, world, device, batch, splits, state, weights, peak)
    if resume_from is not None and saved is not None:
        checkpoint.restore(resume_from, run.model, run.optimizer)
        run.stream.load_state_dict(saved["data"])
    if world.is_main:
        _write_run_files(run, tokenizer)
    resume_step = start if resume_from is not None else None
    metrics = rundir.Metrics(run_dir, resume_step, world.is_main)
    event_log = events.EventLog(run_dir, options.tensorboard and world.is_main, resume_step)
    progress = Progress(progress_mode, start, stop, spec.name)
    wall0 = time.perf_counter()
    try:
        loss, val_loss = _steps(run, start, stop, (metrics, event_log, progress), progress)
    finally:
        progress.close()
        event_log.close()
        metrics.close()
    wall = time.perf_counter() - wall0
    distributed.barrier(world)  # the last checkpoint is on disk before any rank reports done
    if stop == start and saved is not None:  # a finished run resumed: nothing trained, its last loss
        loss = _finite(saved.get("loss"))
    return _summary(run, start, stop, loss, val_loss, wall)


def _finite(value: Any) -> float | None:
    """A loss read back from a checkpoint, when it is a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _steps(
    run: _Run, start: int, stop: int, sinks: tuple[Any, ...], progress: Progress
) -> tuple[float, float | None]:
    """Steps ``start`` to ``stop`` with what falls due after each; the last training and
    validation losses. Each metrics record goes to every one of ``sinks``."""
    tokens_per_step = run.resolved.spec.tokens_per_step
    loss, val_loss = float("nan"), None
    window_step, window_time = start, time.perf_counter()
    depths: list[dict[str, Any]] = []  # each step's drawn depth since the last metrics line
    for step in range(start, stop):
        loss, lr, grad_norm, drawn = _step(run, step)
        depths += [drawn] if drawn else []
        done = step + 1
        tokens_per_s = tokens_per_step * (done - window_step) / max(time.perf_counter() - window_time, 1e-9)
        progress.update(done, loss, tokens_per_s)
        stats = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
        if depths:  # the loops each step computed, and the mean depth its sequences drew
            stats["depths"] = [d["depth"] for d in depths]
            stats["depth_mean"] = sum(d["depth_mean"] for d in depths) / len(depths)
        logged, evaluated = _log_evaluate_checkpoint(run, sinks, done, stop, stats)
        val_loss = evaluated if evaluated is not None else val_loss
        if logged:  # throughput windows leave out evaluation and checkpoint time
            window_step, window_time = done, time.perf_counter()
        if done % run.resolved.spec.train.log_interval == 0:  # the depths went into that line
            depths = []
    return loss, val_loss


# ----------------------------------------------------------------------------- before the first step


def _open_run_dir(run_dir: Path) -> Path:
    """Create the run folder, or say in one line why it cannot be."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror})") from None
    return run_dir


def _resume_path(run_dir: Path, resume: str | None, announce: bool, init: str | None) -> Path | None:
    """The checkpoint to resume from: None for a fresh run, after refusing one that would
    overwrite an existing run's checkpoints and metrics (``init``: the --init-from a fresh run
    names)."""
    if resume is None:
        found = None
    elif resume == "auto":
        found, newest = checkpoint.newest_valid(run_dir), checkpoint.list_checkpoints(run_dir)[-1:]
        if announce and found is not None and found != newest[0]:  # a damaged newest one is skipped
            print(
                f"warning: {newest[0]} does not read back whole; resuming from {found.name}", file=sys.stderr
            )
    else:
        found = _explicit_checkpoint(resume)
    if found is None and checkpoint.list_checkpoints(run_dir):
        if init is not None:
            raise UserError(
                f"{run_dir} already holds checkpoints; --init-from starts a new run: pass --out NEW"
            )
        if resume is None:
            raise UserError(
                f"{run_dir} already holds checkpoints; pass --resume auto to continue it, or --out for a new run"
            )
        raise UserError(  # --resume auto: starting over would overwrite the run's metrics
            f"{run_dir}: none of its checkpoints reads back whole; refusing to start over on top of them"
        )
    return found


def _explicit_checkpoint(resume: str) -> Path:
    """The checkpoint ``--resume PATH`` names, once it reads back as one."""
    if not resume.strip():
        raise UserError("--resume: expected auto or a checkpoint folder, got an empty value")
    found = Path(resume)
    if not found.exists():
        raise UserError(f"--resume {resume}: no such checkpoint")
    checkpoint.check_whole(found)
    return found


def _check_one_line(run_dir: Path, resume_from: Path, step: int) -> None:
    """Refuse to resume into a run folder that holds checkpoints newer than ``step``: they would
    outrank the resumed line (for ``--resume auto`` and ``eval``) and pruning by step would
    delete its own. Branching from an older checkpoint goes into a new folder (``--out``)."""
    newer = [p for p in checkpoint.list_checkpoints(run_dir) if (rundir.checkpoint_step(p) or 0) > step]
    if newer:
        raise UserError(
            f"--resume {resume_from}: {run_dir} already holds a later checkpoint ({newer[-1].name}); "
            f"pass --out NEW to branch from step {step} into a new run, or remove the later "
            "checkpoints to rewind this one"
        )


def _check_resumable(resume_from: Path, architecture: str) -> dict[str, Any]:
    """The checkpoint's saved state, once it was made by this architecture."""
    saved = checkpoint.read_state(resume_from)
    if not {"position", "n_windows"} <= saved.get("data", {}).keys():
        raise UserError(f"{resume_from}/state.json: corrupt checkpoint (no data position to resume from)")
    if saved.get("architecture_sha256") != architecture:
        raise UserError(
            f"{resume_from}: checkpoint was made from a different spec (model or blocks differ); refusing to resume"
        )
    return saved


def _check_same_tokens(resume_from: Path, saved: dict[str, Any], tokenizer: str | None) -> None:
    """Refuse to resume on tokens of another tokenizer or corpus (known once data is prepared)."""
    if saved.get("tokenizer") != tokenizer:
        raise UserError(
            f"{resume_from}: checkpoint was trained with another tokenizer or corpus; refusing to resume"
        )


def _record_source(
    state: dict[str, Any], source: init_from.Source | None, saved: dict[str, Any] | None, announce: bool
) -> None:
    """Where the run's weights came from, kept in every checkpoint's state and env.json: the
    checkpoint --init-from named, or on resume what the run recorded when it started."""
    if source is not None:
        state["init_from"] = source.record
        if announce and source.record["tokenizer"] != state["tokenizer"]:
            print(
                f"note: --init-from {source.named}: trained with another tokenizer; "
                "its token embeddings are reused by id",
                file=sys.stderr,
            )
    elif saved is not None and "init_from" in saved:
        state["init_from"] = saved["init_from"]


def _check_stop(resume_from: Path, start: int, steps: int, until: int | None) -> None:
    """Refuse a stop before the step the run resumes at: there is nothing to train, and the
    schedule would be read past its end. Stopping where it is (a finished run) trains nothing."""
    if until is not None and until < start:
        raise UserError(f"--until {until}: {resume_from} is already at step {start}; stop at a later step")
    if steps < start:
        raise UserError(
            f"train.steps {steps}: {resume_from} is already at step {start}; "
            "the schedule must span at least the steps already trained"
        )


def _build_run(
    resolved: Resolved,
    run_dir: Path,
    world: distributed.World,
    device: torch.device,
    batch: tuple[int, int],
    splits: TokenSplits,
    state: dict[str, Any],
    weights: Path | None,
    peak: float | None,
) -> _Run:
    """The model from the run's generated ``model.py``, placed and compiled as the recipe asks,
    with its optimizer and this rank's batches (``batch``: its micro-batch size and count per step).
    ``weights``: a checkpoint whose weights replace the initial ones (--init-from)."""
    spec, t = resolved.spec, resolved.spec.train
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    module, _ = distributed.main_first(world, lambda: compiled_module(resolved, run_dir, rundir.MODEL))
    state["model_sha256"] = rundir.model_sha256(run_dir)  # eval and sample run only this file
    model = module.Model()
    if weights is not None:  # before placing or sharding: every rank loads the whole model
        checkpoint.load_weights(weights, model)
    if t.compile == "blocks":  # before sharding, so FSDP's hooks stay outside the compiled blocks
        compile_model(model, "blocks", t.compile_mode)
    model = distributed.wrap(model, world, device, t.parallel)
    compiled = compile_model(model, "model", t.compile_mode) if t.compile == "model" else model
    optimizer = build_optimizer(model, t, device)
    micro_batch, accum = batch
    stream = BatchStream(splits.train, spec.seq_len, micro_batch, world.rank, world.size)
    val = val_batches(splits.val, spec.seq_len, math.ceil(t.eval.batches / t.micro_batch), t.micro_batch)
    ctx = autocast(spec, device)
    plan = schedule(spec)
    depth = DepthDraws(plan, t.seed) if plan is not None and not plan.fixed else None
    flops = train_flops_per_token(resolved)
    return _Run(
        resolved,
        run_dir,
        world,
        device,
        ctx,
        model,
        compiled,
        optimizer,
        stream,
        val,
        accum,
        state,
        depth,
        flops,
        peak,
    )


def _device_peak(device: torch.device) -> float | None:
    """The peak FLOP/s of a GPU the table knows; None on a CPU (pass --peak-tflops for an MFU)."""
    return peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def _write_run_files(run: _Run, tokenizer: Tokenizer | None) -> None:
    rundir.write_spec(run.run_dir, run.resolved)
    if tokenizer is not None:
        tokenizer.save(run.run_dir / rundir.TOKENIZER)
    machine_entries = {**machine(run.device), "processes": run.world.size}
    rundir.write_env(run.run_dir, run.resolved.path, machine_entries, run.state.get("init_from"))


# ----------------------------------------------------------------------------- each step


def _step(run: _Run, step: int) -> tuple[float, float, float, dict[str, Any]]:
    """One optimizer step over the global batch: its mean loss, learning rate, gradient norm and
    the depth it was drawn to run (empty for a fixed depth)."""
    t = run.resolved.spec.train
    lr = lr_at(step, t)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    drawn = _depth_record(run, step)
    loss_sum = 0.0
    for micro in range(run.accum):
        x, y = next(run.stream)
        loops = {} if run.depth is None else run.depth.model_args(step, run.stream.last, run.device)
        with distributed.gradient_sync(run.model, micro == run.accum - 1):
            with run.ctx:
                _, loss = run.compiled(
                    x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True), **loops
                )
            (loss / run.accum).backward()
        loss_sum += loss.item()
    (loss_sum,) = distributed.all_sum([loss_sum], run.world, run.device)
    loss_value = loss_sum / (run.accum * run.world.size)  # the mean over the global batch
    if not math.isfinite(loss_value):
        last = checkpoint.newest_valid(run.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"loss is {loss_value} at step {step + 1}; stopped, {kept}")
    grad_norm = _clip(run.model, t.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value, lr, grad_norm, drawn


def _depth_record(run: _Run, step: int) -> dict[str, Any]:
    """The loops a step computes and its mean depth, over the whole global batch (rank-independent)."""
    if run.depth is None:
        return {}
    n = run.accum * run.stream.micro_batch * run.world.size
    loops, mean = run.depth.record(step, run.stream.position + np.arange(n))
    return {"depth": loops, "depth_mean": mean}


def _log_evaluate_checkpoint(
    run: _Run, sinks: tuple[Any, ...], done: int, stop: int, stats: dict[str, Any]
) -> tuple[bool, float | None]:
    """What falls due after step ``done`` (and everything after the last one): a metrics line,
    a validation loss, a checkpoint. Returns whether a line was written, and the loss if evaluated."""
    t = run.resolved.spec.train
    record: dict[str, Any] = {}
    if done % t.log_interval == 0 or done == stop:
        usage = {
            "mfu": mfu(stats["tokens_per_s"], run.flops_per_token, run.peak, run.world.size),
            "peak_memory_mb": peak_memory_mb(run.device),
        }
        record = {"step": done, **stats, **usage, **module_stats(run.model)}
    val_loss = None
    if done % t.eval.interval == 0 or done == stop:
        val_loss = evaluate(run.compiled, run.val, run.device, run.ctx, world=run.world)
        record.update({"step": done, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))})
    for sink in sinks if record else ():
        sink.write(record)
    if done % t.checkpoint.interval == 0 or done == stop:
        payload = {**run.state, "data": run.stream.state_dict(), "loss": stats["loss"]}
        checkpoint.save(
            run.run_dir, done, run.model, run.optimizer, payload, t.checkpoint.keep, is_main=run.world.is_main
        )
    return bool(record), val_loss


def _summary(
    run: _Run, start: int, stop: int, loss: float | None, val_loss: float | None, wall: float
) -> Summary:
    spec, params = run.resolved.spec, run.resolved.params
    return Summary(
        name=spec.name,
        run_dir=str(run.run_dir),
        steps=stop,
        tokens=stop * spec.tokens_per_step,
        train_loss=loss,
        val_loss=val_loss,
        val_ppl=math.exp(min(val_loss, 50)) if val_loss is not None else None,
        rho=module_stats(run.model).get("rho"),
        stored=params.stored,
        effective=params.effective,
        wall_s=wall,
        tokens_per_s=spec.tokens_per_step * (stop - start) / max(wall, 1e-9),
    )


def module_stats(model: nn.Module) -> dict[str, Any]:
    """The looped model's own statistics (rho, blend weights); a collective when sharded."""
    inner = checkpoint._unwrap(model)
    if not hasattr(inner, "loop_stats"):
        return {}
    with distributed.full_parameters(inner):
        return inner.loop_stats()


def _clip(model: nn.Module, max_norm: float | None) -> float:
    """The global gradient norm, after clipping it to ``max_norm`` (a sharded norm is summed over ranks)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
