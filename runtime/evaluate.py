"""Evaluate a trained run at several loop counts (the paper's variable-R test) and sample from it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cartspec.errors import UserError
from cartspec.runtime.data import (
    default_cache_dir,
    is_bin_source,
    load_documents,
    open_bin,
    prepare_tokens,
    val_batches,
)
from cartspec.runtime.tokenizer import Tokenizer
from cartspec.runtime.train import autocast, evaluate, load_run, pick_device, prepare_data
from cartspec.schema import Spec


@dataclass(frozen=True)
class LoopRow:
    loops: int | None  # None: a model without a loop
    val_loss: float
    val_ppl: float


def _validation_tokens(spec: Spec, tokenizer: Tokenizer | None, data: str | None) -> np.ndarray:
    """The run's own validation split, or all of ``data`` tokenized with the run's tokenizer."""
    if data is None:
        source = spec.train.data
        if tokenizer is None or is_bin_source(source.source):
            return prepare_data(spec, default_cache_dir())[1].val
        # the run's tokenizer.json, not one rebuilt from a corpus that may have changed since
        documents = load_documents(source.source)
        return prepare_tokens(
            documents, tokenizer, default_cache_dir(), source.val_fraction, spec.model.vocab_size
        ).val
    if is_bin_source(data):
        return open_bin(data)
    if tokenizer is None:
        raise UserError("--data: this run has no tokenizer.json to tokenize text with; pass a .bin file")
    ids: list[int] = []
    for doc in load_documents(data):
        ids += [tokenizer.bos_id, *tokenizer.encode(doc), tokenizer.eos_id]
    return np.asarray(ids, dtype=np.int64)


def evaluate_loops(
    run_dir: Path, loops: list[int] | None, data: str | None = None, device: str = "auto"
) -> tuple[Spec, list[LoopRow]]:
    """Validation loss and perplexity of the run's newest checkpoint for each loop count."""
    dev = pick_device(device)
    spec, _, model, tokenizer, _ = load_run(run_dir, dev)
    core = spec.blocks.core
    if loops and core is None:
        raise UserError(f"--loops: {spec.name} has no loop to vary")
    counts = loops or ([core.loops] if core is not None else [None])
    tokens = _validation_tokens(spec, tokenizer, data)
    t = spec.train
    batches = val_batches(tokens, spec.seq_len, math.ceil(t.eval.batches / t.micro_batch), t.micro_batch)
    rows = []
    for n in counts:
        try:
            loss = evaluate(model, batches, dev, autocast(spec, dev), loops=n)
        except ValueError as e:  # the generated model's own check (table too short, unshared core)
            raise UserError(f"--loops {n}: {e}") from None
        rows.append(LoopRow(n, loss, math.exp(min(loss, 50))))
    return spec, rows


@torch.no_grad()
def sample(
    run_dir: Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    device: str = "auto",
) -> str:
    """Continue ``prompt`` with the run's model and tokenizer (the context is cropped to max_seq_len)."""
    if temperature < 0:
        raise UserError("--temperature must be >= 0")
    dev = pick_device(device)
    spec, _, model, tokenizer, _ = load_run(run_dir, dev)
    if tokenizer is None:
        raise UserError(f"{run_dir}: the run has no tokenizer.json, so there is no text to sample")
    generator = torch.Generator(device=dev).manual_seed(seed)
    ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    idx = torch.tensor([ids], device=dev)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -spec.model.max_seq_len :])
        logits = logits[0, -1, : tokenizer.vocab_size].float()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
        if nxt == tokenizer.eos_id:
            break
        idx = torch.cat([idx, torch.tensor([[nxt]], device=dev)], dim=1)
    return tokenizer.decode(idx[0, 1:].tolist())
