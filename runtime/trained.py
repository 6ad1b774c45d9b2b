"""A trained run read back for evaluation and sampling: spec, model with its newest weights, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cartspec.errors import UserError
from cartspec.resolve import Resolved
from cartspec.runtime import checkpoint, rundir
from cartspec.runtime.generated import import_module
from cartspec.runtime.tokenizer import Tokenizer, load_tokenizer_file


@dataclass(frozen=True)
class TrainedRun:
    resolved: Resolved
    model: nn.Module  # in eval mode, on the device asked for
    tokenizer: Tokenizer | None  # None: .bin data without a tokenizer
    source: bytes  # model.py as checked and run
    checkpoint: Path  # the checkpoint whose weights the model holds


def load_run(run_dir: Path, device: torch.device) -> TrainedRun:
    """The run's spec (checked like any spec file), its own ``model.py`` (refused unless it is the
    file the newest valid checkpoint was trained with) and that checkpoint's weights."""
    resolved = rundir.read_spec(run_dir)
    newest = checkpoint.newest_valid(run_dir)
    if newest is None:
        raise UserError(f"{run_dir}: no valid checkpoint to load")
    recorded = checkpoint.read_state(newest).get("model_sha256")
    source = rundir.check_model(run_dir, resolved, recorded)  # before anything of it runs
    module = import_module(run_dir / rundir.MODEL, source)
    model = module.Model().to(device)
    checkpoint.load_weights(newest, model)
    model.eval()
    tok_path = run_dir / rundir.TOKENIZER
    tokenizer = load_tokenizer_file(tok_path) if tok_path.is_file() else None
    return TrainedRun(resolved, model, tokenizer, source, newest)
