"""The ``cartspec`` command line.

Every user error (bad spec, missing file, wrong flag) is one located line on stderr and exit
code 2; ``--debug`` shows the traceback. validate/params/graph/schema/compile never import torch.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cartspec.errors import SpecError, UserError
from cartspec.options import (
    check_sample_args,
    loop_counts,
    most_loops,
    peak_tflops,
    read_prompts,
    task_names,
    train_choices,
    write,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compile declarative specs of looped transformers into PyTorch code, parameter reports and training runs.",
)

Sets = Annotated[
    list[str],
    typer.Option("--set", help="Override a spec key: dotted.path=value (YAML). Repeatable; applied last."),
]
SpecArg = Annotated[Path, typer.Argument(help="A spec YAML file.", show_default=False)]
_debug = False


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    global _debug
    _debug = debug


def user_errors(fn):
    """Turn SpecError/UserError into located lines and exit code 2, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SpecError, UserError) as e:
            if _debug:
                raise
            if not _is_rank_zero():  # under torchrun every rank fails alike; rank 0 says why
                raise typer.Exit(2) from None
            lines = [str(p) for p in e.problems] if isinstance(e, SpecError) else [str(e)]
            for line in lines:
                print(f"error: {line}" if isinstance(e, UserError) else line, file=sys.stderr)
            raise typer.Exit(2) from None
        except OSError as e:  # the machine refused: a full disk, a read-only folder, a file in the way
            if _debug:
                raise
            if _is_rank_zero():
                print(f"error: {os_error_line(e)}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def os_error_line(error: OSError) -> str:
    """An OSError that reached a command as one line: the file it names, and why."""
    from cartspec.files import reason
    from cartspec.loader import printable

    where = printable(str(error.filename)) if error.filename is not None else "cannot continue"
    return f"{where}: {reason(error)}"


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


@app.command()
@user_errors
def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files.", show_default=False)],
    set_: Sets = [],
) -> None:  # noqa: B006
    """Check specs: schema, semantics, sizes, and that train can run them. One line per spec;
    every problem at once."""
    from cartspec.checks import check_trainable
    from cartspec.resolve import resolve

    problems = []
    for path in specs:
        try:
            r = resolve(path, set_)
            check_trainable(r.spec, r.loaded)
        except SpecError as e:
            problems.extend(e.problems)
            continue
        print(f"ok  {path}  ({r.spec.name}: {len(r.graph.uses)} uses, {len(r.graph.groups)} sharing groups)")
    if problems:
        raise SpecError(problems)


@app.command()
@user_errors
def params(
    spec: SpecArg,
    set_: Sets = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of tables.")] = False,
) -> None:
    """Parameter and FLOP report: stored, effective, the paper's effective, per block and group."""
    from cartspec.console import print_json, print_params
    from cartspec.resolve import resolve

    report = resolve(spec, set_).params
    if as_json:
        print_json(report.to_json())
    else:
        print_params(report)


@app.command()
@user_errors
def graph(
    spec: SpecArg,
    set_: Sets = [],  # noqa: B006
    fmt: Annotated[
        str, typer.Option("--format", help="text, dot (Graphviz) or json (networkx node-link).")
    ] = "text",
) -> None:
    """The module-use graph: one node per use, with its sharing group and dataflow edges."""
    from cartspec.console import graph_dot, graph_json, graph_text, print_json
    from cartspec.resolve import resolve

    if fmt not in ("text", "dot", "json"):
        raise UserError(f"--format: expected text, dot or json, got {fmt!r}")
    g = resolve(spec, set_).graph
    if fmt == "json":
        print_json(graph_json(g))
    else:
        print(graph_dot(g) if fmt == "dot" else graph_text(g))


@app.command("compile")
@user_errors
def compile_(
    specs: Annotated[list[Path], typer.Argument(help="Spec files.", show_default=False)],
    set_: Sets = [],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("generated"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 with a diff if a file is missing or stale.")
    ] = False,
) -> None:
    """Compile specs into standalone PyTorch modules: <out>/<name>.py."""
    from cartspec.codegen.render import render
    from cartspec.codegen.write import drift, write_atomic
    from cartspec.resolve import resolve

    resolved = []
    problems = []
    for path in specs:  # validate everything first: a bad spec writes nothing
        try:
            resolved.append(resolve(path, set_))
        except SpecError as e:
            problems.extend(e.problems)
    if problems:
        raise SpecError(problems)
    names: dict[str, Path] = {}
    for r in resolved:
        if r.spec.name in names:
            raise UserError(
                f"{r.path}: name '{r.spec.name}' is also the name of {names[r.spec.name]}; both would write {r.spec.name}.py"
            )
        names[r.spec.name] = r.path
    stale = 0
    for r in resolved:
        target = out / f"{r.spec.name}.py"
        text = render(r)
        if check:
            diff = drift(target, text)
            if diff:
                stale += 1
                sys.stdout.write(diff)
            continue
        changed = write_atomic(target, text)
        print(f"{'wrote' if changed else 'unchanged'}  {target}")
    if stale:
        print(f"{stale} of {len(resolved)} generated files are missing or out of date", file=sys.stderr)
        raise typer.Exit(1)
    if check:
        print(f"ok  {len(resolved)} generated files up to date")


@app.command()
@user_errors
def train(
    spec: SpecArg,
    set_: Sets = [],
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="auto (newest valid checkpoint) or a checkpoint folder.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    compile_scope: Annotated[
        str | None,
        typer.Option(
            "--compile", help="off, blocks (each unique block once) or model (default: train.compile)."
        ),
    ] = None,
    compile_mode: Annotated[
        str | None,
        typer.Option(
            "--compile-mode", help="torch.compile mode, e.g. max-autotune (default: train.compile_mode)."
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Total steps; shorthand for --set train.steps=N.", min=1)
    ] = None,
    until: Annotated[
        int | None,
        typer.Option("--until", help="Stop after this step; the schedule still spans train.steps.", min=1),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Processes on this machine, through torchrun (train.parallel: ddp or fsdp).",
        ),
    ] = 1,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            help="Start a new run from the weights of a run folder (its newest valid checkpoint) or a checkpoint folder.",
        ),
    ] = None,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard", help="Also write TensorBoard event files (pip install 'cartspec[tensorboard]')."
        ),
    ] = False,
    peak: Annotated[
        str | None,
        typer.Option(
            "--peak-tflops",
            help="One device's peak TFLOP/s, for the mfu of metrics.jsonl where the GPU table has none (or a CPU).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a spec with its train: recipe; ends with a summary of losses, rho and parameters."""
    from cartspec.checks import check_trainable
    from cartspec.resolve import resolve
    from cartspec.runtime.device import pick_device
    from cartspec.runtime.loop import Options, TrainingDiverged
    from cartspec.runtime.loop import train as run_training

    peak_value = peak_tflops(peak)  # the rest of the new options are checked by the runtime, first
    overrides = [*set_, *([f"train.steps={steps}"] if steps is not None else [])]
    for flag, key, value in (
        ("--compile", "compile", compile_scope),
        ("--compile-mode", "compile_mode", compile_mode),
    ):
        if value is not None:
            choices = train_choices(key)
            if value not in choices:
                raise UserError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")
            overrides.append(f"train.{key}={value}")
    resolved = resolve(spec, overrides)
    check_trainable(resolved.spec, resolved.loaded)  # before any work: a vocabulary its tokenizer fits
    if nproc > 1:
        from cartspec.runtime import distributed

        t = resolved.spec.train
        distributed.split_batch(t.micro_batch, t.grad_accum, nproc)  # fail here, not in N workers
        distributed.check_devices(nproc, pick_device(device))
        argv = [*(["--debug"] if _debug else []), "train", str(spec), "--device", device]
        argv += [arg for s in overrides for arg in ("--set", s)]
        argv += ["--out", str(out)] if out is not None else []
        argv += ["--resume", resume] if resume is not None else []
        argv += ["--until", str(until)] if until is not None else []
        argv += ["--init-from", init_from] if init_from is not None else []
        argv += ["--peak-tflops", peak] if peak is not None else []
        argv += ["--tensorboard"] if tensorboard else []
        argv += ["--json"] if as_json else []
        raise typer.Exit(distributed.launch(nproc, argv))
    options = Options(
        out=out,
        resume=resume,
        device=device,
        until=until,
        progress="bar" if sys.stderr.isatty() else "lines",
        init_from=init_from,
        tensorboard=tensorboard,
        peak_tflops=peak_value,
    )
    try:
        summary = run_training(resolved, options)
    except TrainingDiverged as e:
        if _is_rank_zero():
            print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if not _is_rank_zero():
        return
    from cartspec.console import print_json, print_train_summary

    if as_json:
        print_json(summary.__dict__)
    else:
        print_train_summary(summary)


@app.command("eval")
@user_errors
def eval_(
    run: Annotated[Path, typer.Argument(help="A run directory made by cartspec train.", show_default=False)],
    loops: Annotated[
        str | None, typer.Option("--loops", help="Loop counts, e.g. 2,4,6,8,10,12 (default: the trained R).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Text/jsonl/.bin to evaluate on (default: the run's validation split)."),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="lm-evaluation-harness tasks instead of validation loss: names (hellaswag,arc_easy), task .yaml files or folders of them.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="With --tasks: at most this many examples per task.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Validation loss and perplexity of a trained run for each loop count (variable-R inference),
    or lm-evaluation-harness tasks at each loop count (--tasks)."""
    counts = loop_counts(loops)
    if tasks is not None:
        return _eval_tasks(run, task_names(tasks, data), counts, limit, device, as_json)
    if limit is not None:
        raise UserError("--limit counts the examples of --tasks; without --tasks there are none")
    from cartspec.runtime.evaluate import evaluate_loops

    spec, rows = evaluate_loops(run, counts, data, device)
    if as_json:
        from cartspec.console import print_json

        print_json({"name": spec.name, "run": str(run), "rows": [r.__dict__ for r in rows]})
        return
    from cartspec.console import print_loop_rows

    print_loop_rows(spec, rows)


def _eval_tasks(
    run: Path, tasks: list[str], counts: list[int] | None, limit: int | None, device: str, as_json: bool
) -> None:
    """``eval --tasks``: the harness's tasks at each loop count, one row per loop count."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "eval --tasks needs lm-evaluation-harness: pip install 'cartspec[eval]' (torch==2.13.0 on a CPU)"
        ) from None
    from cartspec.runtime.harness import run_tasks

    trained, rows = run_tasks(run, tasks, counts, device, limit)
    spec = trained.resolved.spec
    if as_json:
        from cartspec.console import print_json

        print_json({"name": spec.name, "run": str(run), "tasks": tasks, "rows": [r.__dict__ for r in rows]})
        return
    from cartspec.console import print_task_rows

    print_task_rows(spec, rows)


@app.command()
@user_errors
def sample(
    run: Annotated[Path, typer.Argument(help="A run directory made by cartspec train.", show_default=False)],
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")] = "",
    prompt_file: Annotated[
        Path | None, typer.Option("--prompt-file", help="Continue each line of this UTF-8 file in turn.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=100_000)] = 200,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1)] = 50,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling: in (0, 1].")] = None,
    loops: Annotated[int | None, typer.Option("--loops", help="Loop count (default: the trained R).")] = None,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Re-run the whole context for every token (slow; for checking)."),
    ] = False,
    exit_threshold: Annotated[
        float | None,
        typer.Option(
            "--exit-threshold",
            help="In (0, 1]: end a token's loop once a loop changes the state by less than this fraction of its norm.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Text from a trained model, through its own tokenizer, decoded with its KV cache."""
    from cartspec.runtime.decode import Decoding, Sampling
    from cartspec.runtime.evaluate import sample as generate

    for flag, value in (("--top-p", top_p), ("--exit-threshold", exit_threshold)):
        if value is not None and not 0 < value <= 1:
            raise UserError(f"{flag}: expected a number in (0, 1], got {value}")
    if loops is not None and not 1 <= loops <= most_loops():
        raise UserError(f"--loops: expected 1 to {most_loops()}, got {loops}")
    if exit_threshold is not None and no_cache:
        raise UserError("--exit-threshold decodes token by token with the cache; drop --no-cache")
    prompts = read_prompts(prompt, prompt_file)
    for text in prompts:
        check_sample_args(text, temperature, seed)
    stream = len(prompts) == 1  # one prompt: its text shows as it is written
    sampling, decoding = (
        Sampling(temperature, top_k, top_p, seed),
        Decoding(loops, not no_cache, exit_threshold),
    )
    samples = generate(run, prompts, max_new_tokens, sampling, decoding, device, write if stream else None)
    if stream:
        print()
    else:
        print("\n\n".join(s.text for s in samples))
    used = [s.loops_per_token for s in samples if s.loops_per_token is not None]
    if used:
        print(f"mean loops per token: {sum(used) / len(used):.2f}", file=sys.stderr)


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="A run directory made by cartspec train.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="A new (or empty) folder to write.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="hf: a transformers model folder.")] = "hf",
) -> None:
    """A trained run's newest checkpoint as a model folder other tools load (transformers)."""
    from cartspec.runtime.export import check_export_args

    check_export_args(out, fmt)
    from cartspec.runtime.export import export_hf

    done = export_hf(run, out)
    print(f"wrote {done.out}  ({done.name}, {done.checkpoint.name}): {', '.join(done.files)}")


@app.command()
@user_errors
def parity(
    spec: SpecArg,
    match: Annotated[
        str, typer.Option("--match", help="stored, effective or flops (forward FLOPs per sequence).")
    ],
    set_: Sets = [],  # noqa: B006
    vary: Annotated[str, typer.Option("--vary", help="layers (depth) or width (d_model).")] = "layers",
    rule: Annotated[
        str | None,
        typer.Option(
            "--rule",
            help="nearest, at-most or at-least (default: at-most for stored, at-least for effective and flops).",
        ),
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option(
            "--layers", help="Depth for --vary width (default: prelude + core + coda layers).", min=1
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write the dense spec here.")] = None,
) -> None:
    """The dense baseline of a looped spec at stored, effective or FLOP parity, as a standalone spec."""
    from cartspec.experiments.parity import describe, find
    from cartspec.resolve import resolve

    found = find(resolve(spec, set_), match, vary, rule, layers)
    lines = describe(found)
    if out is None:
        sys.stdout.write(found.yaml())
        print("\n".join(lines), file=sys.stderr)
        return
    from cartspec.codegen.write import write_atomic

    write_atomic(out, found.yaml())
    print("\n".join([*lines, f"wrote    {out}  ({found.name})"]))


@app.command()
@user_errors
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="A sweep YAML file.", show_default=False)],
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep folder (default sweeps/<sweep name>).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the configs and their counts; train nothing.")
    ] = False,
    print_commands: Annotated[
        bool,
        typer.Option(
            "--print-commands",
            help="Print one `cartspec train` command per config (writing parity baselines' specs to <out>/specs); train nothing.",
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", min=1, help="Train each config in this many processes (one per GPU), through torchrun."
        ),
    ] = 1,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=1,
            help="Train this many configs at once, each in its own process (one GPU, or a share of the cores, each).",
        ),
    ] = 1,
) -> None:
    """Train every config of a sweep one after another, resumably; results go to <out>/results.db."""
    from cartspec.experiments.plan import commands, dry_run_lines, plan_sweep, write_derived_specs
    from cartspec.experiments.run import run_sweep
    from cartspec.experiments.store import db_path

    if dry_run and print_commands:
        raise UserError("--dry-run and --print-commands: pick one")
    plan = plan_sweep(sweep_file, out)
    if dry_run:
        print("\n".join(dry_run_lines(plan)))
        return
    if print_commands:
        for path in write_derived_specs(plan):
            print(f"# wrote {path} (a parity baseline's spec)", file=sys.stderr)
        print("\n".join(commands(plan, nproc)))
        return
    done, failed = run_sweep(plan, device, nproc=nproc, jobs=jobs)
    print(f"{done} done, {failed} failed; results in {db_path(plan.out_dir)}")
    if failed:
        raise typer.Exit(1)


@app.command("report")
@user_errors
def report_(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep folder (holds results.db).", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Folder for report.md and plots (default: the sweep folder)."),
    ] = None,
) -> None:
    """A markdown report with tables and PNG plots from a sweep's results."""
    from cartspec.experiments.report import write_report

    path = write_report(sweep_dir, out)
    print(f"wrote {path}")


@app.command()
def schema() -> None:
    """The JSON Schema of the spec language (for editors: yaml-language-server)."""
    from cartspec.schema import Spec

    out = Spec.model_json_schema(by_alias=True)
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "cartspec spec"
    print(json.dumps(out, indent=2))


def main() -> None:
    app()
