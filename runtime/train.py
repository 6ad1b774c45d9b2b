"""The one training loop for every generated model.

A run directory holds everything needed to read, resume, evaluate or sample it later:
``spec.yaml`` (the resolved spec), ``model.py`` (the generated code that was trained),
``tokenizer.json``, ``env.json``, ``metrics.jsonl`` and ``checkpoints/``.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml
from torch import nn

from cartspec.accounting import account
from cartspec.errors import UserError
from cartspec.resolve import Resolved, architecture_sha256
from cartspec.runtime import checkpoint, distributed, rundir
from cartspec.runtime.data import (
    BatchStream,
    TokenSplits,
    default_cache_dir,
    is_bin_source,
    load_bin_splits,
    load_documents,
    prepare_tokens,
    val_batches,
)
from cartspec.runtime.generated import compiled_module
from cartspec.runtime.optim import build_optimizer, lr_at
from cartspec.runtime.tokenizer import Tokenizer, build_tokenizer, load_tokenizer_file
from cartspec.runtime.torch_compile import compile_model
from cartspec.schema import Spec


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Options:
    out: Path | None = None
    resume: str | None = None  # None: fresh run; "auto": newest valid checkpoint if any; else a path
    device: str = "auto"
    until: int | None = None  # stop after this step (the schedule still spans train.steps)
    cache_dir: Path | None = None
    progress: bool = True


@dataclass
class Summary:
    name: str
    run_dir: str
    steps: int
    tokens: int
    train_loss: float
    val_loss: float | None
    val_ppl: float | None
    rho: float | None
    stored: int
    effective: int
    wall_s: float
    tokens_per_s: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def autocast(spec: Spec, device: torch.device):
    """bf16 autocast on CUDA (precision auto or bf16); float32 otherwise."""
    use_bf16 = spec.train.precision == "bf16" or (spec.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


# ----------------------------------------------------------------------------- data


def prepare_data(spec: Spec, cache_dir: Path) -> tuple[Tokenizer | None, TokenSplits]:
    """Tokenizer and train/validation tokens for the spec's data section (cached)."""
    data = spec.train.data
    if is_bin_source(data.source):
        splits = load_bin_splits(
            data.source, val_fraction=data.val_fraction, model_vocab=spec.model.vocab_size
        )
        tokenizer = load_tokenizer_file(data.tokenizer_path) if data.tokenizer_path else None
        return tokenizer, splits
    documents = load_documents(data.source)
    tokenizer = build_tokenizer(
        data.tokenizer, documents, spec.model.vocab_size, path=data.tokenizer_path, cache_dir=cache_dir
    )
    return tokenizer, prepare_tokens(
        documents, tokenizer, cache_dir, data.val_fraction, spec.model.vocab_size
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    ctx,
    loops: int | None = None,
    world: distributed.World = distributed.World(),
) -> float:
    """Mean cross-entropy over the validation batches (every sequence weighs the same).

    Under data parallelism each rank takes every W-th batch; all ranks run the same number of
    forward passes (a sharded model gathers its weights in each), padding with weight 0.
    """
    mine = [(x, y, 1) for x, y in batches[world.rank :: world.size]]
    mine += [(*batches[0], 0)] * (math.ceil(len(batches) / world.size) - len(mine))
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # no gradients to synchronise
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y, weight in mine:
        with ctx:
            _, loss = model(x.to(device), y.to(device), **({} if loops is None else {"loops": loops}))
        total += loss.item() * x.size(0) * weight
        count += x.size(0) * weight
    model.train(was_training)
    total, count = distributed.all_sum([total, count], world, device)
    return total / count


# ----------------------------------------------------------------------------- run directory


def _machine(device: torch.device) -> dict[str, Any]:
    """env.json's torch part: torch's version and the device trained on."""
    return {
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


# ----------------------------------------------------------------------------- the loop


def train(resolved: Resolved, options: Options = Options()) -> Summary:
    """Train ``resolved`` in this process, or as one rank of a torchrun job (see distributed)."""
    world = distributed.world_from_env()
    device = distributed.setup(world, pick_device(options.device))
    try:
        return _train(resolved, options, world, device)
    finally:
        distributed.teardown(world)


def _train(resolved: Resolved, options: Options, world: distributed.World, device: torch.device) -> Summary:
    spec, t = resolved.spec, resolved.spec.train
    micro_batch, accum = distributed.split_batch(t.micro_batch, t.grad_accum, world.size)
    run_dir = rundir.run_dir_for(resolved, options.out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror})") from None
    resume_from = _resume_path(run_dir, options.resume, announce=world.is_main)
    if resume_from is None and checkpoint.list_checkpoints(run_dir):
        if options.resume is None:
            raise UserError(
                f"{run_dir} already holds checkpoints; pass --resume auto to continue it, or --out for a new run"
            )
        raise UserError(  # --resume auto: starting over would overwrite the run's metrics
            f"{run_dir}: none of its checkpoints reads back whole; refusing to start over on top of them"
        )

    cache_dir = options.cache_dir or default_cache_dir()
    tokenizer, splits = distributed.main_first(world, lambda: prepare_data(spec, cache_dir))
    state = {
        "architecture_sha256": architecture_sha256(spec),
        "tokenizer": tokenizer.fingerprint if tokenizer is not None else None,
    }
    if resume_from is not None:  # before model.py is rewritten: a refused resume leaves the run as it was
        saved = checkpoint.read_state(resume_from)
        if saved.get("architecture_sha256") != state["architecture_sha256"]:
            raise UserError(
                f"{resume_from}: checkpoint was made from a different spec (model or blocks differ); refusing to resume"
            )
        if saved.get("tokenizer") != state["tokenizer"]:
            raise UserError(
                f"{resume_from}: checkpoint was trained with another tokenizer or corpus; refusing to resume"
            )

    torch.manual_seed(t.seed)  # the same initial weights on every rank
    module, _ = distributed.main_first(world, lambda: compiled_module(resolved, run_dir, "model.py"))
    model = module.Model()
    if t.compile == "blocks":  # before sharding, so FSDP's hooks stay outside the compiled blocks
        compile_model(model, "blocks", t.compile_mode)
    model = distributed.wrap(model, world, device, t.parallel)
    optimizer = build_optimizer(model, t, device)
    stream = BatchStream(splits.train, spec.seq_len, micro_batch, world.rank, world.size)
    val = val_batches(splits.val, spec.seq_len, math.ceil(t.eval.batches / t.micro_batch), t.micro_batch)

    start = 0
    if resume_from is not None:
        start = checkpoint.restore(resume_from, model, optimizer).step
        stream.load_state_dict(saved["data"])

    if world.is_main:
        rundir.write_spec(run_dir, resolved)
        if tokenizer is not None:
            tokenizer.save(run_dir / rundir.TOKENIZER)
        rundir.write_env(run_dir, resolved.path, _machine(device))
    ctx = autocast(spec, device)
    compiled = compile_model(model, "model", t.compile_mode) if t.compile == "model" else model
    metrics = rundir.Metrics(run_dir, start if resume_from is not None else None, world.is_main)
    report = account(resolved.graph)
    stop = min(t.steps, options.until) if options.until is not None else t.steps
    tokens_per_step = spec.tokens_per_step

    loss_value, val_loss = float("nan"), None
    wall0 = window_time = time.perf_counter()
    window_step = start
    progress = _progress(options.progress and world.is_main, start, stop, spec.name)
    try:
        for step in range(start, stop):
            lr = lr_at(step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(accum):
                x, y = next(stream)
                with distributed.gradient_sync(model, micro == accum - 1):
                    with ctx:
                        _, loss = compiled(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                    (loss / accum).backward()
                loss_sum += loss.item()
            (loss_sum,) = distributed.all_sum([loss_sum], world, device)
            loss_value = loss_sum / (accum * world.size)  # the mean over the global batch
            if not math.isfinite(loss_value):
                last = checkpoint.newest_valid(run_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
                raise TrainingDiverged(f"loss is {loss_value} at step {step + 1}; stopped, {kept}")
            grad_norm = _clip(model, t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens_per_s = (
                tokens_per_step * (done - window_step) / max(time.perf_counter() - window_time, 1e-9)
            )
            progress.update(done, loss_value, tokens_per_s)

            record: dict[str, Any] = {}
            if done % t.log_interval == 0 or done == stop:
                record = {
                    "step": done,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_s,
                }
                record.update(module_stats(model))
            if done % t.eval.interval == 0 or done == stop:
                val_loss = evaluate(compiled, val, device, ctx, world=world)
                record.update({"step": done, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))})
            if record:
                metrics.write(record)
            if done % t.checkpoint.interval == 0 or done == stop:
                payload = {**state, "data": stream.state_dict(), "loss": loss_value}
                checkpoint.save(
                    run_dir, done, model, optimizer, payload, t.checkpoint.keep, is_main=world.is_main
                )
            if record:  # throughput windows leave out evaluation and checkpoint time
                window_step, window_time = done, time.perf_counter()
    finally:
        progress.close()
        metrics.close()

    wall = time.perf_counter() - wall0
    steps_run = stop - start
    rho = module_stats(model).get("rho")
    distributed.barrier(world)  # the last checkpoint is on disk before any rank reports done
    return Summary(
        name=spec.name,
        run_dir=str(run_dir),
        steps=stop,
        tokens=stop * tokens_per_step,
        train_loss=loss_value,
        val_loss=val_loss,
        val_ppl=math.exp(min(val_loss, 50)) if val_loss is not None else None,
        rho=rho,
        stored=report.stored,
        effective=report.effective,
        wall_s=wall,
        tokens_per_s=tokens_per_step * steps_run / max(wall, 1e-9),
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


def _resume_path(run_dir: Path, resume: str | None, announce: bool) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found, newest = checkpoint.newest_valid(run_dir), checkpoint.list_checkpoints(run_dir)[-1:]
        if announce and found is not None and found != newest[0]:  # a damaged newest one is skipped
            print(
                f"warning: {newest[0]} does not read back whole; resuming from {found.name}", file=sys.stderr
            )
        return found
    path = Path(resume)
    if not path.exists():
        raise UserError(f"--resume {resume}: no such checkpoint")
    checkpoint.read_state(path)
    return path


class _progress:
    """A rich progress bar (step, loss, tokens/s, ETA); silent when disabled."""

    def __init__(self, enabled: bool, start: int, stop: int, name: str):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(f"[bold]{name}[/bold]"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=stop, completed=start, loss=float("nan"), tps=0.0)

    def update(self, done: int, loss: float, tps: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, loss=loss, tps=tps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def load_run(
    run_dir: Path, device: torch.device
) -> tuple[Spec, ModuleType, nn.Module, Tokenizer | None, Path]:
    """A trained run's spec, generated module, model with its newest weights, and tokenizer."""
    from cartspec.loader import Loaded
    from cartspec.validate import validate

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    spec_path = run_dir / "spec.yaml"
    if not spec_path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no spec.yaml)")
    spec = validate(Loaded(data=yaml.safe_load(spec_path.read_text()), files=[spec_path]))
    from cartspec.runtime.generated import import_module

    module = import_module(run_dir / "model.py")
    newest = checkpoint.newest_valid(run_dir)
    if newest is None:
        raise UserError(f"{run_dir}: no valid checkpoint to load")
    model = module.Model().to(device)
    checkpoint.load_weights(newest, model)
    model.eval()
    tok_path = run_dir / "tokenizer.json"
    tokenizer = load_tokenizer_file(tok_path) if tok_path.is_file() else None
    return spec, module, model, tokenizer, newest
