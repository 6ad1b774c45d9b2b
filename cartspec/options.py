"""Command-line values the commands check before any work: each bad one is one line (a
UserError), never click's multi-line usage box or a traceback from deep inside."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from cartspec.errors import UserError


def train_choices(key: str) -> tuple[str, ...]:
    """The values a Literal field of the spec's train section allows."""
    from typing import get_args

    from cartspec.schema import Train

    return get_args(Train.model_fields[key].annotation)


def peak_tflops(text: str | None) -> float | None:
    """``--peak-tflops``: one device's peak in TFLOP/s, a positive finite number."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--peak-tflops: expected a positive number of TFLOP/s (e.g. 989), got {text!r}")
    return value


def loop_counts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--loops: expected comma-separated integers like 2,4,6, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--loops: loop counts must be >= 1, got {text!r}")
    most = most_loops()
    if max(counts) > most:  # a model without a loop-embedding table has no bound of its own
        raise UserError(f"--loops: at most {most} (the most a spec's core.loops allows), got {max(counts)}")
    return counts


def task_names(text: str, data: str | None) -> list[str]:
    """``eval --tasks``: comma-separated task names or paths, each once."""
    if data is not None:
        raise UserError("--tasks and --data: pick one (--data is text for the validation loss)")
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError(f"--tasks: expected task names like hellaswag,arc_easy, got {text!r}")
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        raise UserError(f"--tasks: {', '.join(repeated)} named more than once")
    return names


def most_loops() -> int:
    """The schema's upper bound of ``blocks.core.loops``."""
    from annotated_types import Le

    from cartspec.schema import Core

    return next(m.le for m in Core.model_fields["loops"].metadata if isinstance(m, Le))


MAX_PROMPT_FILE = 1 << 20


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def read_prompts(prompt: str, prompt_file: Path | None) -> list[str]:
    """The prompts to continue: --prompt, or each non-empty line of --prompt-file (UTF-8, at most 1 MiB)."""
    if prompt_file is None:
        return [prompt]
    if prompt:
        raise UserError("--prompt and --prompt-file: pick one")
    if not prompt_file.is_file():
        raise UserError(f"--prompt-file {prompt_file}: no such file")
    try:
        with prompt_file.open("rb") as f:
            raw = f.read(MAX_PROMPT_FILE + 1)
    except OSError as e:
        raise UserError(f"--prompt-file {prompt_file}: cannot read it ({e.strerror})") from None
    if len(raw) > MAX_PROMPT_FILE:
        raise UserError(f"--prompt-file {prompt_file}: larger than {MAX_PROMPT_FILE:,} bytes")
    try:
        lines = [line for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise UserError(f"--prompt-file {prompt_file}: not UTF-8 text (byte {e.start})") from None
    if not lines:
        raise UserError(f"--prompt-file {prompt_file}: no prompt in it (every line is empty)")
    return lines


MIN_TEMPERATURE = 1e-4  # below it logits / temperature overflow float32 and softmax is NaN


def check_sample_args(prompt: str, temperature: float, seed: int) -> None:
    """Refuse in one line what would fail deep in the tokenizer or torch with a traceback."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes that are not UTF-8 arrive as lone surrogates
        raise UserError(f"--prompt: not valid UTF-8 text (at character {e.start})") from None
    if not math.isfinite(temperature) or temperature < 0 or 0 < temperature < MIN_TEMPERATURE:
        raise UserError(
            f"--temperature: expected 0 (greedy) or a finite value of at least {MIN_TEMPERATURE}, got {temperature}"
        )
    if not 0 <= seed < 2**64:
        raise UserError(f"--seed: expected an integer from 0 to 2^64 - 1, got {seed}")
