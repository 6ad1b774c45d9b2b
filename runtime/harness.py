"""``cartspec eval RUN --tasks``: lm-evaluation-harness tasks run on the run's generated model
directly, once per loop count.

``CartspecLM`` is the harness's model interface (registered as ``cartspec``, so
``lm_eval.simple_evaluate(model="cartspec", model_args="run=runs/x,loops=4")`` works once this
module is imported). Every text is scored as training saw documents: BOS first, then the
tokenizer's ids. A causal model scores requests in batches padded on the right (no position
sees the padding after it); a model that attends both ways scores one request at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from cartspec.errors import UserError
from cartspec.runtime.decode import Decoding, Sampling, decode
from cartspec.runtime.device import autocast, pick_device
from cartspec.runtime.trained import TrainedRun, load_run

BATCH = 16  # requests scored per forward pass
DEFAULT_MAX_GEN_TOKS = 256


@register_model("cartspec")
class CartspecLM(LM):
    """A trained cartspec run as an lm-eval model, at one loop count (``loops=None``: the trained R)."""

    def __init__(
        self,
        run: str | Path | TrainedRun,
        loops: int | None = None,
        device: str = "auto",
        batch_size: int | str | None = BATCH,
        **_: Any,  # max_batch_size and the like, which the harness passes to every model
    ) -> None:
        super().__init__()
        self.dev = pick_device(device)
        self.run = run if isinstance(run, TrainedRun) else load_run(Path(run), self.dev)
        self.dev = next(self.run.model.parameters()).device
        spec = self.run.resolved.spec
        if self.run.tokenizer is None:
            raise UserError(f"{spec.name}: the run has no tokenizer.json; lm-eval tasks are text")
        if loops is not None and spec.blocks.core is None:
            raise UserError(f"--loops: {spec.name} has no loop to vary")
        self.tokenizer = self.run.tokenizer
        self.loops = None if loops is None else int(loops)
        self.window = spec.model.max_seq_len
        self.causal = self.run.resolved.arch.decodable
        size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else BATCH  # or "auto"
        self.batch = size if self.causal else 1
        self.autocast = autocast(spec, self.dev)
        self._forward(
            torch.tensor([[self.tokenizer.bos_id]], device=self.dev)
        )  # a loop count it refuses fails here

    # ------------------------------------------------------------------ the harness's three calls

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        return self._score([self._encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        """Each text's whole log-likelihood, window after window, every token predicted once."""
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, request in enumerate(requests):
            ids = self.tokenizer.encode(request.args[0])
            windows = get_rolling_token_windows(ids, self.tokenizer.bos_id, self.window, context_len=1)
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._score(pairs), strict=True):
            totals[i] += logprob
        return totals

    def generate_until(self, requests: list) -> list[str]:
        return [self._generate(*r.args) for r in requests]

    # ------------------------------------------------------------------ scoring

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """BOS + context, and the continuation's ids as they come out of encoding both together
        (a space ending the context moves to the continuation, where tokenizers expect it)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        cut = len(self.tokenizer.encode(context))
        return [self.tokenizer.bos_id, *whole[:cut]], whole[cut:]

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): the continuation's log-probability and whether greedy
        decoding would have produced it; the context keeps its last tokens that fit the window."""
        rows = [(list(ctx) + list(cont))[-(self.window + 1) :] for ctx, cont in pairs]
        scored = [i for i, (_, cont) in enumerate(pairs) if cont]  # an empty continuation scores 0
        scored.sort(key=lambda i: -len(rows[i]))  # similar lengths share a batch
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        for start in range(0, len(scored), self.batch):
            chunk = scored[start : start + self.batch]
            x = torch.zeros(len(chunk), max(len(rows[i]) for i in chunk) - 1, dtype=torch.long)
            for row, i in enumerate(chunk):
                x[row, : len(rows[i]) - 1] = torch.tensor(rows[i][:-1])
            logprobs = self._forward(x.to(self.dev)).float().log_softmax(-1)
            for row, i in enumerate(chunk):
                end = len(rows[i]) - 1  # positions 0..end-1 predict tokens 1..end
                begin = end - min(len(pairs[i][1]), end)
                target = torch.tensor(rows[i][begin + 1 :], device=self.dev)
                scores = logprobs[row, begin:end]
                picked = scores.gather(-1, target.unsqueeze(-1)).sum().item()
                out[i] = (picked, bool((scores.argmax(-1) == target).all()))
        return out

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        loops = {} if self.loops is None else {"loops": self.loops}
        try:
            with self.autocast:
                return self.run.model(x, **loops)[0]
        except ValueError as e:  # the generated model's own check (loop table, unshared core)
            raise UserError(f"--loops {self.loops}: {e}") from None

    # ------------------------------------------------------------------ generation

    def _generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """Greedy (or sampled, given do_sample) text after ``context`` up to the first stop string."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        sampling = Sampling(temperature, kwargs.pop("top_k", None), kwargs.pop("top_p", None), seed=0)
        tok = self.tokenizer
        with self.autocast:
            found = decode(
                self.run.model,
                [tok.bos_id, *tok.encode(context)],
                max_new,
                window=self.window,
                vocab=tok.vocab_size,
                stop=tok.eos_id,
                sampling=sampling,
                decoding=Decoding(self.loops, cache=self.causal),
                until=lambda new: any(s in tok.decode(new) for s in until) if until else False,
            )
        text = tok.decode(found.ids)
        return min((text.split(s)[0] for s in until), key=len, default=text)


@dataclass(frozen=True)
class TaskRow:
    loops: int | None  # None: a model without a loop
    results: dict[str, dict[str, float]]  # task -> {"acc": ..., "acc_stderr": ...}


def run_tasks(
    run_dir: Path,
    tasks: list[str],
    loops: list[int] | None,
    device: str = "auto",
    limit: int | None = None,
) -> tuple[TrainedRun, list[TaskRow]]:
    """Each task at each loop count (the trained R when none are given), one row per loop count."""
    from lm_eval import simple_evaluate

    run = load_run(run_dir, pick_device(device))
    core = run.resolved.spec.blocks.core
    if loops and core is None:
        raise UserError(f"--loops: {run.resolved.spec.name} has no loop to vary")
    manager, specs = task_manager(tasks)
    rows = []
    for n in loops or [None]:
        lm = CartspecLM(run, loops=n, device=device)
        found = simple_evaluate(model=lm, tasks=specs, task_manager=manager, limit=limit, log_samples=False)
        assert found is not None  # one process: rank 0
        rows.append(TaskRow(n if n is not None else (core.loops if core else None), _metrics(found)))
    return run, rows


def task_manager(tasks: list[str]) -> tuple[Any, list[str]]:
    """The harness's task index and the tasks to run, every entry checked: a harness task, group
    or tag name, a task file (``.yaml``) or a folder of them (all its tasks). Only names need the
    index of the harness's thousands of built-in tasks, which takes seconds to build."""
    from lm_eval.tasks import TaskManager

    folders = [t for t in tasks if Path(t).is_dir()]
    names = [t for t in tasks if t not in folders and not t.endswith((".yaml", ".yml"))]
    manager = TaskManager(include_path=folders or None, include_defaults=bool(names))
    specs: list[str] = []
    for entry in tasks:
        if entry in folders:
            inside = TaskManager(include_path=entry, include_defaults=False).all_subtasks
            if not inside:
                raise UserError(f"--tasks {entry}: no task files in this folder")
            specs += inside
        elif entry not in names:
            if not Path(entry).is_file():
                raise UserError(f"--tasks {entry}: no such task file")
            specs.append(entry)
        elif entry in manager.all_tasks:
            specs.append(entry)
        else:
            raise UserError(f"--tasks {entry}: unknown task (`lm-eval ls tasks` lists them)")
    try:
        manager.load(specs)  # reads every task file and its data once: a bad one fails here
    except Exception as e:  # the harness and datasets raise anything from KeyError to ConnectionError
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise UserError(f"--tasks: {lines[0]}") from None
    return manager, specs


def _metrics(found: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each task's numeric metrics, named without the harness's filter suffix (``acc,none``)."""
    out: dict[str, dict[str, float]] = {}
    for task, values in found.get("results", {}).items():
        metrics = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "samples":
                name = metric if filt in ("", "none") else f"{metric} ({filt})"
                metrics[name] = float(value) if math.isfinite(value) else float("nan")
        out[task] = metrics
    return out
