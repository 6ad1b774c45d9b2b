"""Validation loss of a model, of a trained run at several loop counts (variable-R inference: a
looped model run for more or fewer loops than it was trained with), and text sampled from a run."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cartspec.errors import UserError
from cartspec.runtime import distributed
from cartspec.runtime.corpus import open_corpus
from cartspec.runtime.data import (
    bin_eval_tokens,
    default_cache_dir,
    is_bin_source,
    prepare_data,
    prepare_tokens,
    val_batches,
)
from cartspec.runtime.decode import Decoding, Sampling, decode
from cartspec.runtime.device import autocast, pick_device
from cartspec.runtime.tokenizer import Tokenizer
from cartspec.runtime.trained import load_run
from cartspec.schedule import schedule
from cartspec.schema import Spec


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    ctx: AbstractContextManager,
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


@dataclass(frozen=True)
class LoopRow:
    loops: int | None  # None: a model without a loop
    val_loss: float
    val_ppl: float
    trained_share: float | None  # how often training ran this loop count (1 at R for a fixed depth)


def _validation_tokens(spec: Spec, tokenizer: Tokenizer | None, data: str | None) -> np.ndarray:
    """The run's own validation split, or all of ``data`` tokenized with the run's tokenizer."""
    if data is None:
        source = spec.train.data
        if tokenizer is None or is_bin_source(source.source):
            return prepare_data(spec, default_cache_dir())[1].val
        # the run's tokenizer.json, not one rebuilt from a corpus that may have changed since
        return prepare_tokens(
            open_corpus(source.source),
            tokenizer,
            default_cache_dir(),
            source.val_fraction,
            spec.model.vocab_size,
        ).val
    if is_bin_source(data):
        return bin_eval_tokens(data, spec.model.vocab_size)
    if tokenizer is None:
        raise UserError("--data: this run has no tokenizer.json to tokenize text with; pass a .bin file")
    ids: list[int] = []
    for doc in open_corpus(data).documents():
        ids += [tokenizer.bos_id, *tokenizer.encode(doc), tokenizer.eos_id]
    return np.asarray(ids, dtype=np.int64)


def evaluate_loops(
    run_dir: Path, loops: list[int] | None, data: str | None = None, device: str = "auto"
) -> tuple[Spec, list[LoopRow]]:
    """Validation loss and perplexity of the run's newest checkpoint for each loop count."""
    dev = pick_device(device)
    run = load_run(run_dir, dev)
    spec = run.resolved.spec
    core = spec.blocks.core
    if loops and core is None:
        raise UserError(f"--loops: {spec.name} has no loop to vary")
    counts = loops or ([core.loops] if core is not None else [None])
    tokens = _validation_tokens(spec, run.tokenizer, data)
    t = spec.train
    batches = val_batches(tokens, spec.seq_len, math.ceil(t.eval.batches / t.micro_batch), t.micro_batch)
    plan = schedule(spec)
    trained = plan.pmf() if plan is not None else None  # the depths training drew, for comparison
    rows = []
    for n in counts:
        try:
            loss = evaluate(run.model, batches, dev, autocast(spec, dev), loops=n)
        except ValueError as e:  # the generated model's own check (table too short, unshared core)
            raise UserError(f"--loops {n}: {e}") from None
        rows.append(LoopRow(n, loss, math.exp(min(loss, 50)), trained.get(n, 0.0) if trained else None))
    return spec, rows


def sample(
    run_dir: Path,
    prompts: list[str],
    max_new_tokens: int,
    sampling: Sampling,
    decoding: Decoding,
    device: str = "auto",
    stream: Callable[[str], None] | None = None,
) -> list[Sample]:
    """Continue each prompt with the run's model and tokenizer; ``stream`` receives the text of a
    single prompt's continuation as it grows."""
    dev = pick_device(device)
    run = load_run(run_dir, dev)
    spec, model, tokenizer = run.resolved.spec, run.model, run.tokenizer
    if tokenizer is None:
        raise UserError(f"{run_dir}: the run has no tokenizer.json, so there is no text to sample")
    if decoding.loops is not None and spec.blocks.core is None:
        raise UserError(f"--loops: {spec.name} has no loop to vary")
    out = []
    for prompt in prompts:
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        shown = _Stream(tokenizer, stream) if stream is not None and len(prompts) == 1 else None
        if shown is not None:
            stream(prompt)
        try:
            found = decode(
                model,
                ids,
                max_new_tokens,
                window=spec.model.max_seq_len,
                vocab=tokenizer.vocab_size,
                stop=tokenizer.eos_id,
                sampling=sampling,
                decoding=decoding,
                on_token=shown.add if shown is not None else lambda _: None,
            )
        except ValueError as e:  # the generated model's own refusal (loop table, early exit, cache)
            raise UserError(f"sample: {e}") from None
        if shown is not None:
            shown.close()
        out.append(Sample(tokenizer.decode([*ids[1:], *found.ids]), len(found.ids), found.loops_per_token))
    return out


@dataclass(frozen=True)
class Sample:
    text: str  # the prompt and its continuation
    new_tokens: int
    loops_per_token: float | None


class _Stream:
    """Passes on the continuation's text as it grows, holding back an unfinished UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, write: Callable[[str], None]):
        self.tokenizer, self.write = tokenizer, write
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._show(self.tokenizer.decode(self.ids).rstrip("\ufffd"))

    def close(self) -> None:
        self._show(self.tokenizer.decode(self.ids))

    def _show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown) :])
            self.shown = text
