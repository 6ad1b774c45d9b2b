"""A sweep's report: ``report.md`` with markdown tables and PNG plots, from ``results.db`` and each
run's ``metrics.jsonl`` (no torch; matplotlib's Agg canvas, imported only here).

Pairing: each finished looped run is compared with the finished dense run(s) whose stored (and,
separately, effective) count is nearest on a log scale; dense runs with equal counts (seeds of
one baseline) are averaged. Gaps are ``(dense - looped) / looped``, so a negative loss gap means
the dense model is better. Ablations are rows with an ``of`` config; their change is the spec
difference recorded when the sweep was planned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from cartspec.console import human
from cartspec.experiments import store
from cartspec.experiments.store import Row
from cartspec.runtime.rundir import read_metrics

FIGSIZE = (10.0, 4.5)  # inches at DPI: every plot is 1000 x 450 pixels
DPI = 100
MAX_LEGEND = 24  # more series than this and the legend would not fit beside the plot


def write_report(sweep_dir: Path, out: Path | None = None) -> Path:
    """Write ``report.md`` and its plots into ``out`` (default: the sweep folder); return its path."""
    sweep_dir = Path(sweep_dir)
    with store.connect(sweep_dir) as con:
        runs = store.rows(con)
        evals = store.loop_evals(con)
        info = store.meta(con)
    out = Path(out) if out is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    metrics = {r.id: read_metrics(sweep_dir / r.run_dir) for r in runs}
    done = [r for r in runs if r.status == "done" and r.val_loss is not None]
    lines = _header(info.get("name", sweep_dir.name), info.get("description"), runs)
    lines += _runs_section(runs)
    lines += _parity_section(done, "stored")
    lines += _parity_section(done, "effective")
    lines += _ablation_section(runs)
    lines += _loops_section(runs, evals)
    lines += _plots_section(runs, metrics, evals, out)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _header(name: str, description: str | None, runs: list[Row]) -> list[str]:
    lines = [f"# Sweep {name}", ""]
    if description:
        lines += [description, ""]
    counts = {s: sum(r.status == s for r in runs) for s in store.STATUSES}
    return lines + [
        f"{len(runs)} configs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
        "Counts: stored = unique parameters; effective = size x uses per forward (the unrolled "
        "network); eff. (paper) = the CART author's count; GFLOPs = forward per sequence at "
        "max_seq_len, the paper's convention.",
        "",
    ]


# ----------------------------------------------------------------------------- tables


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> list[str]:
    """A markdown table; numbers are right-aligned."""
    right = right or [True] * len(headers)
    align = ["---:" if r else ":---" for r in right]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*out, ""]


def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2%}"


def _gap(a: float | None, b: float | None) -> float | None:
    """(a - b) / b."""
    return None if a is None or b is None or b == 0 else (a - b) / b


def _runs_section(runs: list[Row]) -> list[str]:
    rows = [
        [
            r.id,
            r.role,
            r.status,
            r.spec,
            r.d_model,
            r.loops if r.loops is not None else "–",
            human(r.stored),
            human(r.effective),
            human(r.effective_paper),
            f"{r.forward_flops / 1e9:,.2f}",
            r.steps,
            _f(r.train_loss),
            _f(r.val_loss),
            _f(r.val_ppl, 2),
            _f(r.rho),
            "–" if r.wall_s is None else f"{r.wall_s:,.0f} s",
        ]
        for r in runs
    ]
    headers = ["run", "role", "status", "spec", "d", "R", "stored", "effective", "eff. (paper)",
               "GFLOPs/seq", "steps", "train loss", "val loss", "val ppl", "rho", "wall"]  # fmt: skip
    left = {"run", "role", "status", "spec"}
    out = ["## Runs", "", *table(headers, rows, [h not in left for h in headers])]
    failed = [r for r in runs if r.status == "failed" and r.error]
    if failed:
        out += ["Failures:", ""]
        out += [f"- `{r.id}`: {r.error.strip().splitlines()[-1]}" for r in failed]
        out.append("")
    return out


def nearest_dense(looped: Row, dense: list[Row], key: Callable[[Row], int]) -> list[Row]:
    """The dense run(s) whose count is nearest ``looped``'s on a log scale (ties: all of them)."""
    if not dense:
        return []
    distance = {r.id: abs(math.log(key(r) / key(looped))) for r in dense}
    best = min(distance.values())
    return [r for r in dense if math.isclose(distance[r.id], best, rel_tol=1e-12, abs_tol=1e-15)]


def _parity_section(done: list[Row], count: str) -> list[str]:
    key = (lambda r: r.stored) if count == "stored" else (lambda r: r.effective)
    looped = [r for r in done if r.looped]
    dense = [r for r in done if not r.looped]
    out = [f"## Looped vs dense at {count} parity", ""]
    if not looped or not dense:
        missing = "looped" if not looped else "dense"
        return [*out, f"_No finished {missing} runs in this sweep._", ""]
    out += [
        f"Each looped run is paired with the finished dense run(s) whose {count} count is nearest "
        "(equal counts, e.g. seeds, are averaged). Gaps are (dense - looped) / looped: a negative "
        "loss or ppl gap means the dense model is better.",
        "",
    ]
    rows = []
    for r in looped:
        pair = nearest_dense(r, dense, key)
        d_count = key(pair[0])
        d_loss = mean(p.val_loss for p in pair)
        d_ppl = (
            mean(p.val_ppl for p in pair if p.val_ppl is not None) if all(p.val_ppl for p in pair) else None
        )
        rows.append(
            [
                r.id,
                human(key(r)),
                ", ".join(p.id for p in pair),
                human(d_count),
                _pct(_gap(d_count, key(r))),
                _f(r.val_loss),
                _f(d_loss),
                _pct(_gap(d_loss, r.val_loss)),
                _f(r.val_ppl, 2),
                _f(d_ppl, 2),
                _pct(_gap(d_ppl, r.val_ppl)),
            ]
        )
    headers = ["looped run", count, "paired dense run(s)", f"dense {count}", "count gap",
               "looped val loss", "dense val loss", "loss gap", "looped ppl", "dense ppl", "ppl gap"]  # fmt: skip
    return [*out, *table(headers, rows, [h not in ("looped run", "paired dense run(s)") for h in headers])]


def _ablation_section(runs: list[Row]) -> list[str]:
    by_id = {r.id: r for r in runs}
    variants = [r for r in runs if r.role == "extra" and r.ref is not None]
    out = ["## Ablations and variants against their base", ""]
    if not variants:
        return [*out, "_No extra runs with an `of:` config in this sweep._", ""]
    out += ["Deltas are (variant - base) / base; the change is the difference of the resolved specs.", ""]
    rows = []
    for r in variants:
        base = by_id.get(r.ref)
        ok = base is not None and base.status == "done" and r.status == "done"
        rows.append(
            [
                r.id,
                r.ref,
                f"`{r.change}`" if r.change else "(same spec)",
                human(r.stored) + (f" ({_pct(_gap(r.stored, base.stored))})" if base else ""),
                human(r.effective) + (f" ({_pct(_gap(r.effective, base.effective))})" if base else ""),
                _f(r.val_loss),
                _pct(_gap(r.val_loss, base.val_loss)) if ok else "–",
                _f(r.val_ppl, 2),
                _pct(_gap(r.val_ppl, base.val_ppl)) if ok else "–",
            ]
        )
    headers = ["run", "of", "change", "stored", "effective", "val loss", "Δ loss", "val ppl", "Δ ppl"]
    return [*out, *table(headers, rows, [h not in ("run", "of", "change") for h in headers])]


def _loops_section(runs: list[Row], evals: dict[str, list[tuple[int, float, float]]]) -> list[str]:
    out = ["## Variable loop count at inference", ""]
    evaluated = [r for r in runs if r.id in evals]
    if not evaluated:
        return [*out, "_No loop evaluations (set `eval_loops: true` in the sweep file)._", ""]
    counts = sorted({n for r in evaluated for n, _, _ in evals[r.id]})
    out += ["Validation perplexity of each finished looped run at other loop counts (* = trained R).", ""]
    rows = []
    for r in evaluated:
        ppl = {n: p for n, _, p in evals[r.id]}
        cells = [("–" if n not in ppl else f"{ppl[n]:.2f}" + ("*" if n == r.loops else "")) for n in counts]
        best = min(ppl, key=ppl.get)
        rows.append([r.id, r.loops, best, *cells])
    return [
        *out,
        *table(["run", "R", "best", *map(str, counts)], rows, [False, True, True, *[True] * len(counts)]),
    ]


# ----------------------------------------------------------------------------- plots


def _figure(ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _short(x: float) -> str:
    """An axis label: 40000 -> 40K, 1.25e8 -> 125M."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def _legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if 0 < len(labels) <= MAX_LEGEND:
        size = "small" if len(labels) <= 12 else "x-small"
        fig.legend(handles, labels, loc="outside right upper", fontsize=size)


def _colors(n: int) -> list:
    """n distinguishable colours: tab10, tab20, then a continuous map."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _plots_section(runs: list[Row], metrics: dict[str, list[dict]], evals: dict, out: Path) -> list[str]:
    """Draw each plot into ``out`` as a PNG; its heading, then the image or why it is not drawn."""
    lines = ["## Plots", ""]
    for title, filename, draw in (
        ("Loss curves", "loss_curves.png", _loss_curves),
        ("Validation loss vs parameters", "val_vs_params.png", _val_vs_params),
        ("Validation perplexity vs loops at inference", "variable_r.png", _variable_r),
        ("rho over training", "rho.png", _rho),
    ):
        fig = draw(runs, metrics, evals)
        if isinstance(fig, str):
            shown = f"_Not drawn: {fig}._"
        else:
            fig.savefig(out / filename, dpi=DPI)
            shown = f"![{title}]({filename})"
        lines += [f"### {title}", "", shown, ""]
    return lines


def _loss_curves(runs, metrics, evals):
    series = [(r, metrics[r.id]) for r in runs if metrics.get(r.id)]
    if not series:
        return "no metrics yet"
    fig, (train_ax, val_ax) = _figure(2)
    for (r, records), color in zip(series, _colors(len(series)), strict=True):
        steps = [m["step"] for m in records if "loss" in m]
        train_ax.plot(steps, [m["loss"] for m in records if "loss" in m], lw=1, label=r.id, color=color)
        val = [(m["step"], m["val_loss"]) for m in records if m.get("val_loss") is not None]
        if val:
            val_ax.plot(*zip(*val, strict=True), marker="o", ms=3, lw=1, color=color)
    for ax, name in ((train_ax, "train loss"), (val_ax, "validation loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    _legend(fig, [train_ax])
    return fig


def _val_vs_params(runs, metrics, evals):
    done = [r for r in runs if r.status == "done" and r.val_loss is not None]
    if not done:
        return "no finished runs"
    from matplotlib.ticker import FuncFormatter

    fig, axes = _figure(2)
    groups = (
        ("looped (grid)", "o", lambda r: r.looped and r.role == "grid"),
        ("looped (extra)", "^", lambda r: r.looped and r.role != "grid"),
        ("dense", "s", lambda r: not r.looped),
    )
    for ax, count in zip(axes, ("stored", "effective"), strict=True):
        for label, marker, member in groups:
            pts = [r for r in done if member(r)]
            if pts:
                ax.scatter(
                    [getattr(r, count) for r in pts], [r.val_loss for r in pts], marker=marker, label=label
                )
                if len(done) <= 24:
                    for r in pts:
                        xy = (getattr(r, count), r.val_loss)
                        ax.annotate(
                            r.id, xy, xytext=(3, 3), textcoords="offset points", fontsize=6, alpha=0.7
                        )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _short(x)))
        xs = [getattr(r, count) for r in done]
        narrow = max(xs) / min(xs) < 10  # within a decade: label the minor ticks too
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _, narrow=narrow: _short(x) if narrow else ""))
        ax.set_xlabel(f"{count} parameters")
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return fig


def _variable_r(runs, metrics, evals):
    from matplotlib.ticker import MaxNLocator

    evaluated = [r for r in runs if r.id in evals]
    if not evaluated:
        return "no loop evaluations in this sweep"
    fig, (ax,) = _figure(1)
    for r, color in zip(evaluated, _colors(len(evaluated)), strict=True):
        loops = [n for n, _, _ in evals[r.id]]
        ppl = [p for _, _, p in evals[r.id]]
        ax.plot(loops, ppl, marker=".", lw=1, label=f"{r.id} (R={r.loops})", color=color)
        if r.loops in loops:
            ax.plot([r.loops], [ppl[loops.index(r.loops)]], marker="*", ms=10, color=color)
    ax.set_xlabel("loops at inference (star: trained R)")
    ax.set_ylabel("validation perplexity")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend(fig, [ax])
    return fig


def _rho(runs, metrics, evals):
    series = [
        (r, [(m["step"], m["rho"]) for m in metrics.get(r.id, []) if m.get("rho") is not None]) for r in runs
    ]
    series = [(r, pts) for r, pts in series if pts]
    if not series:
        return "no run logged rho (no LTI gate)"
    fig, (ax,) = _figure(1)
    for (r, pts), color in zip(series, _colors(len(series)), strict=True):
        ax.plot(*zip(*pts, strict=True), lw=1, label=r.id, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel("rho = max sigmoid(a)")
    ax.grid(alpha=0.3)
    _legend(fig, [ax])
    return fig
