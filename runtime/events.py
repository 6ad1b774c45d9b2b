"""TensorBoard event files of a run's metrics (``--tensorboard``), in ``tensorboard/`` beside
``metrics.jsonl``; the package comes with the optional extra ``cartspec[tensorboard]``."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from cartspec.errors import UserError
from cartspec.runtime import rundir


def require() -> None:
    """Refuse ``--tensorboard`` in one line, before any work, where the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'cartspec[tensorboard]'")


class EventLog:
    """Every number of each metrics record as a scalar at its step: ``val_*`` under ``val/``,
    the rest under ``train/``. A resumed run hides the events past the step it resumes at, as
    ``metrics.jsonl`` drops its lines."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / rundir.TENSORBOARD), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key != "step" and number and math.isfinite(value):
                tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                self.writer.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
