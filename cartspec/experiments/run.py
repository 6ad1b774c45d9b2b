"""Running a sweep: every config trains one after another, resumably, and lands in the store.

Done configs are skipped, an interrupted one continues from its newest checkpoint, and one
``cartspec sweep`` at a time holds a sweep folder. The runtime (torch) is imported only when
something is actually trained or evaluated.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cartspec.errors import UserError
from cartspec.experiments import store
from cartspec.experiments.metrics import final
from cartspec.experiments.plan import Config, Plan, write_derived_specs
from cartspec.loader import display
from cartspec.resolve import Resolved, spec_sha256
from cartspec.runtime.rundir import newest_step, read_metrics

Echo = Callable[[str], None]


def run_sweep(
    p: Plan,
    device: str = "auto",
    echo: Echo = functools.partial(print, flush=True),
    nproc: int = 1,
    jobs: int = 1,
) -> tuple[int, int]:
    """Train every config not yet done, in order; returns (done, failed). Resumable at any point:
    done configs are skipped, an interrupted one continues from its newest checkpoint. With
    ``nproc`` > 1 each config trains in that many processes (``cartspec train --nproc``); with
    ``jobs`` > 1 that many configs train at once, each in a process of its own."""
    if nproc > 1 and jobs > 1:
        raise UserError("--nproc and --jobs: pick one (processes for one config, or configs at once)")
    p.out_dir.mkdir(parents=True, exist_ok=True)
    done = failed = 0
    with _lock(p.out_dir), store.connect(p.out_dir, create=True) as con:
        claims = json.dumps(p.claims)
        store.set_meta(con, name=p.name, sweep_file=str(p.path), description=p.description, claims=claims)
        write_derived_specs(p)
        register(con, p)
        have = {r.id: r for r in store.rows(con)}
        todo = sum(have[c.id].status != "done" for c in p.configs)
        echo(f"sweep {p.name}: {len(p.configs)} configs, {todo} to run -> {display(p.out_dir)}")
        evaluated = set(store.loop_evals(con))
        if todo or any(loop_counts(c, p.eval_loops) and c.id not in evaluated for c in p.configs):
            from cartspec.runtime.device import pick_device

            picked = pick_device(device)  # a wrong --device is one error, not one failed run per config
            if nproc > 1:
                from cartspec.runtime import distributed

                distributed.check_devices(nproc, picked)
        session = _Session(con, p, device, echo, nproc)
        queue: list[tuple[Config, str, float]] = []
        for i, c in enumerate(p.configs, 1):
            tag = f"[{i:>{len(str(len(p.configs)))}}/{len(p.configs)}] {c.id}"
            counts = loop_counts(c, p.eval_loops)
            row = have[c.id]
            if row.status == "done":
                session.finished_before(c, tag, counts if c.id not in evaluated else [])
                done += 1
            elif jobs > 1:
                queue.append((c, tag, row.wall_s or 0.0))
            elif session.train(c, tag, counts, row.wall_s or 0.0):
                done += 1
            else:
                failed += 1
        if queue:
            finished = _Jobs(session, jobs).run(queue)
            done, failed = done + finished, failed + len(queue) - finished
    return done, failed


def loop_counts(config: Config, setting: bool | list[int]) -> list[int]:
    """The loop counts a finished run is validated at: none for dense or unshared cores."""
    core = config.resolved.spec.blocks.core
    if not setting or core is None or not core.shared:
        return []
    cap = core.loop_embedding.rows if core.loop_embedding is not None else None
    counts = list(range(1, max(2 * core.loops, 16) + 1)) if setting is True else sorted(set(setting))
    return [n for n in counts if n >= 1 and (cap is None or n <= cap)]


@contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """One ``cartspec sweep`` per sweep folder at a time."""
    handle = open(out_dir / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the user keeps to one process
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{out_dir}: another `cartspec sweep` is running on this folder") from None
        yield
    finally:
        handle.close()


# ----------------------------------------------------------------------------- the store's rows


def fingerprint(resolved: Resolved) -> str:
    """What a config id stands for: the hash of its whole resolved spec."""
    return spec_sha256(resolved.spec)


def register(con: sqlite3.Connection, p: Plan) -> None:
    """Put every config in the database; refuse when a config id now means a different spec."""
    for position, c in enumerate(p.configs):
        row = _row(c, position)
        old = store.get(con, c.id)
        if old is None or old.status == "pending" and not p.run_dir(c).exists():
            store.put(con, row)
        elif old.fingerprint != row.fingerprint:
            raise UserError(
                f"{c.at}: config {c.id} is not the one {display(p.out_dir)} already holds "
                f"(status {old.status}); restore the sweep file or pass another --out"
            )
        else:
            store.update(con, c.id, position=position, role=c.role, ref=c.ref, change=c.change)


def _row(c: Config, position: int) -> store.Row:
    spec, r = c.resolved.spec, c.report
    return store.Row(
        id=c.id,
        position=position,
        role=c.role,
        ref=c.ref,
        change=c.change,
        spec=spec.name,
        spec_path=display(c.spec_path),
        overrides=json.dumps(c.overrides),
        grid=json.dumps(c.grid),
        fingerprint=fingerprint(c.resolved),
        looped=int(c.looped),
        loops=c.loops,
        d_model=spec.model.d_model,
        stored=r.stored,
        effective=r.effective,
        effective_paper=r.effective_paper,
        forward_flops=r.flops.forward_per_sequence,
        steps=c.steps,
        run_dir=f"runs/{c.id}",
    )


# ----------------------------------------------------------------------------- one config


@dataclass
class _Session:
    """One ``cartspec sweep`` at work: the open store, the plan, the device, where lines go."""

    con: sqlite3.Connection
    plan: Plan
    device: str
    echo: Echo
    nproc: int = 1

    def finished_before(self, c: Config, tag: str, counts: list[int]) -> None:
        """A done config is not trained again, only evaluated at ``counts`` (if any are left)."""
        if not counts:
            self.echo(f"{tag}  done before; skipped")
            return
        try:
            self.evaluate(c, counts)
            self.echo(f"{tag}  done before; evaluated at loops {counts[0]}..{counts[-1]}")
        except Exception as e:
            self.echo(f"{tag}  done before; loop evaluation failed: {_one_line(e)}")

    def train(self, c: Config, tag: str, counts: list[int], before: float) -> bool:
        """Train (or resume) one config, evaluate it at ``counts`` and record how it went;
        False when it failed. ``before`` is the training time of earlier attempts."""
        from cartspec.runtime.loop import Options, TrainingDiverged, train

        run_dir = self.plan.run_dir(c)
        start = newest_step(run_dir)
        self.echo(f"{tag}  training" + (f" (resuming from step {start})" if start else ""))
        store.update(self.con, c.id, status="running", error=None)
        t0 = time.perf_counter()
        try:
            if self.nproc > 1:
                tokens_per_s = self.launch(c, run_dir)
            else:
                options = Options(out=run_dir, resume="auto", device=self.device, progress="off")
                tokens_per_s = train(c.resolved, options).tokens_per_s
            wall = before + time.perf_counter() - t0
            if counts:
                self.evaluate(c, counts)
        except KeyboardInterrupt:
            spent = before + time.perf_counter() - t0
            store.update(self.con, c.id, status="pending", error="interrupted", wall_s=spent)
            raise
        except Exception as e:
            expected = isinstance(e, UserError | TrainingDiverged)
            error = _one_line(e) if expected else traceback.format_exc()
            spent = before + time.perf_counter() - t0
            store.update(self.con, c.id, status="failed", error=error, wall_s=spent)
            self.echo(f"{tag}  failed: {_one_line(e)}")
            return False
        self.record(c, tag, wall, before, tokens_per_s)
        return True

    def launch(self, c: Config, run_dir: Path) -> float:
        """Train ``c`` in ``nproc`` processes through torchrun; its tokens/s from its metrics."""
        from cartspec.runtime import distributed

        t = c.resolved.spec.train
        distributed.split_batch(t.micro_batch, t.grad_accum, self.nproc)  # a batch it cannot split: one line
        argv = ["train", str(c.spec_path), "--device", self.device, "--out", str(run_dir), "--resume", "auto"]
        argv += [arg for o in c.overrides for arg in ("--set", o)]
        code = distributed.launch(self.nproc, argv)
        if code:
            raise UserError(
                f"cartspec train --nproc {self.nproc} exited with code {code} (its lines above say why)"
            )
        speeds = [m["tokens_per_s"] for m in read_metrics(run_dir) if m.get("tokens_per_s")]
        return speeds[-1] if speeds else 0.0

    def record(self, c: Config, tag: str, wall: float, before: float, tokens_per_s: float) -> None:
        """A trained config's final values, from its own metrics, into the store and one line."""
        last = final(read_metrics(self.plan.run_dir(c)))
        store.update(
            self.con,
            c.id,
            status="done",
            error=None,
            tokens=c.tokens,
            train_loss=last.train_loss,
            val_loss=last.val_loss,
            val_ppl=last.val_ppl,
            rho=last.rho,
            wall_s=wall,
            tokens_per_s=tokens_per_s if tokens_per_s > 0 else None,
        )
        val = f"val loss {last.val_loss:.4f} (ppl {last.val_ppl:.2f})" if last.val_loss is not None else ""
        rho = f", rho {last.rho:.4f}" if last.rho is not None else ""
        self.echo(f"{tag}  done: {val}{rho}, {wall - before:.1f} s")

    def evaluate(self, c: Config, counts: list[int]) -> None:
        from cartspec.runtime.evaluate import evaluate_loops

        _, found = evaluate_loops(self.plan.run_dir(c), counts, None, self.device)
        store.put_loop_evals(self.con, c.id, [(r.loops, r.val_loss, r.val_ppl) for r in found])


@dataclass
class _Job:
    config: Config
    tag: str
    before: float  # training time of earlier attempts
    started: float
    process: subprocess.Popen
    out: IO[bytes]
    err: IO[bytes]


class _Jobs:
    """Several configs at once, each trained by ``cartspec.experiments.worker`` in its own process;
    the threads (CPU) or the GPUs are dealt out evenly, and only this process writes the store."""

    def __init__(self, session: _Session, jobs: int) -> None:
        import torch

        from cartspec.runtime.device import pick_device

        self.session, self.jobs = session, jobs
        self.running: dict[int, _Job] = {}  # slot -> job
        cuda = pick_device(session.device).type == "cuda" and "CUDA_VISIBLE_DEVICES" not in os.environ
        self.gpus = torch.cuda.device_count() if cuda else 0  # 0: leave the devices as they are

    def env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        return env

    def start(self, slot: int, c: Config, tag: str, before: float) -> None:
        s = self.session
        s.echo(f"{tag}  training (job {slot + 1} of {self.jobs})")
        store.update(s.con, c.id, status="running", error=None)
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish
        args = [sys.executable, "-m", "cartspec.experiments.worker", str(s.plan.path), str(s.plan.out_dir)]
        process = subprocess.Popen([*args, c.id, s.device], stdout=out, stderr=err, env=self.env(slot))
        self.running[slot] = _Job(c, tag, before, time.perf_counter(), process, out, err)

    def finish(self, slot: int) -> bool:
        """Record a finished job in the store; False when it failed."""
        job, s = self.running.pop(slot), self.session
        wall = job.before + time.perf_counter() - job.started
        job.out.seek(0)
        job.err.seek(0)
        stdout, stderr = job.out.read().decode(errors="replace"), job.err.read().decode(errors="replace")
        job.out.close()
        job.err.close()
        if job.process.returncode != 0:
            lines = stderr.strip().splitlines() or [f"exited with code {job.process.returncode}"]
            error = lines[-1] if job.process.returncode == 2 else stderr or lines[-1]
            store.update(s.con, job.config.id, status="failed", error=error, wall_s=wall)
            s.echo(f"{job.tag}  failed: {lines[-1]}")
            return False
        result = json.loads(stdout.strip().splitlines()[-1])
        store.put_loop_evals(s.con, job.config.id, [tuple(e) for e in result["loop_evals"]])
        s.record(job.config, job.tag, wall, job.before, result["tokens_per_s"])
        return True

    def run(self, queue: list[tuple[Config, str, float]]) -> int:
        """Train every queued config, ``jobs`` at a time; returns how many finished."""
        done, waiting = 0, list(queue)
        try:
            while waiting or self.running:
                for slot in range(self.jobs):
                    if slot not in self.running and waiting:
                        self.start(slot, *waiting.pop(0))
                time.sleep(0.2)
                for slot, job in list(self.running.items()):
                    if job.process.poll() is not None:
                        done += self.finish(slot)
        except KeyboardInterrupt:
            for job in self.running.values():  # each worker saves nothing more; its checkpoints stand
                job.process.terminate()
                job.process.wait()
                spent = job.before + time.perf_counter() - job.started
                store.update(
                    self.session.con, job.config.id, status="pending", error="interrupted", wall_s=spent
                )
            raise
        return done


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]
