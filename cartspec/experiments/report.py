"""A sweep's report: ``report.md`` with markdown tables and PNG plots, from ``results.db`` and each
run's ``metrics.jsonl`` (no torch; matplotlib's Agg canvas, imported only here).

Seeds: runs that differ only in ``train.seed`` are one group (``seeds.py``); tables show the
mean over seeds ± the sample standard deviation, plots the mean with a band from the lowest to the
highest seed. Pairing: each finished looped group is compared with the finished dense group whose
stored (and, separately, effective and FLOP) count is nearest on a log scale. Gaps are
``(dense - looped) / looped``, so a negative loss gap means the dense model is better. Ablations
are groups with an ``of`` config; their change is the spec difference recorded when the sweep was
planned. Claims named in the sweep file get a figure and a verdict (``claims.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from cartspec.console import human
from cartspec.experiments import store
from cartspec.experiments.claims import Evals, evaluate, signed
from cartspec.experiments.seeds import SEED, Group, decimals, groups, interval, mean_sd, stat
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
    every = groups(runs)
    done = groups([r for r in runs if r.status == "done" and r.val_loss is not None])
    lines = _header(info.get("name", sweep_dir.name), info.get("description"), runs)
    lines += _runs_section(runs)
    lines += _seeds_section(done)
    lines += _claims_section(json.loads(info.get("claims") or "[]"), done, evals)
    lines += _parity_section(done, "stored")
    lines += _parity_section(done, "effective")
    lines += _parity_section(done, "FLOP")
    lines += _ablation_section(every, done)
    lines += _loops_section(done, evals)
    lines += _plots_section(every, done, metrics, evals, out)
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


def nearest_dense(looped: Group, dense: list[Group], key: Callable[[Row], int]) -> Group | None:
    """The dense group whose count is nearest ``looped``'s on a log scale (ties: the first)."""
    if not dense:
        return None
    return min(dense, key=lambda g: abs(math.log(key(g.first) / key(looped.first))))


def _loss(g: Group) -> list[float]:
    return g.values(lambda r: r.val_loss)


def _seeds_section(done: list[Group]) -> list[str]:
    out = ["## Seed groups", ""]
    if not done:
        return [*out, "_No finished runs in this sweep._", ""]
    out += [
        "Runs that differ only in their seed, as one row: the mean over seeds ± the sample standard "
        "deviation (the spread), with no more digits than the spread supports.",
        "",
    ]
    rows = [
        [
            g.label,
            g.seeds,
            human(g.first.stored),
            human(g.first.effective),
            mean_sd(stat(_loss(g))),
            mean_sd(stat(g.values(lambda r: r.val_ppl)), 2),
            mean_sd(stat(g.values(lambda r: r.rho))),
        ]
        for g in done
    ]
    headers = ["group", "seeds", "stored", "effective", "val loss", "val ppl", "rho"]
    return [*out, *table(headers, rows, [h != "group" for h in headers])]


def _claims_section(claims: list[dict[str, Any]], done: list[Group], evals: Evals) -> list[str]:
    if not claims:
        return []
    by_label = {g.label: g for g in done}
    out = [
        "## Claims",
        "",
        "Each claim's figure is variant minus base over seeds, with Welch's 95% interval; a loss "
        "difference is shown as a perplexity ratio. Verdicts read only the interval (see "
        "`cartspec/experiments/claims.py`): one that straddles zero is not resolved at this scale.",
        "",
    ]
    rows = []
    for c in claims:
        result = evaluate(c, by_label, evals)
        compared = c["variant"] + (f" vs {c['base']}" if c.get("base") else "")
        rows.append([c["claim"], c.get("paper") or "–", compared, c["measure"], result.figure, result.seeds,
                     result.verdict])  # fmt: skip
    headers = ["claim", "paper", "compared", "measure", "cartspec", "seeds", "verdict"]
    return [*out, *table(headers, rows, [h == "seeds" for h in headers])]


def _difference(a: Group, b: Group) -> tuple[str, str]:
    """exp(mean loss of a - mean loss of b) - 1, the perplexity ratio the CART paper states gaps
    in, and its Welch 95% interval; with an interval, both with no more digits than it supports."""
    ratio = math.expm1(mean(_loss(a)) - mean(_loss(b)))
    ci = interval(_loss(a), _loss(b))
    if ci is None:
        return _pct(ratio), "–"
    lo, hi = math.expm1(ci[0]), math.expm1(ci[1])
    d = decimals((hi - lo) / 2, scale=100)
    return signed(ratio, d, percent=True), f"{signed(lo, d, percent=True)} to {signed(hi, d, percent=True)}"


PARITY_KEYS: dict[str, Callable[[Row], int]] = {
    "stored": lambda r: r.stored,
    "effective": lambda r: r.effective,
    "FLOP": lambda r: r.forward_flops,
}


def _parity_section(done: list[Group], count: str) -> list[str]:
    key = PARITY_KEYS[count]
    looped = [g for g in done if g.first.looped]
    dense = [g for g in done if not g.first.looped]
    out = [f"## Looped vs dense at {count} parity", ""]
    if not looped or not dense:
        missing = "looped" if not looped else "dense"
        return [*out, f"_No finished {missing} runs in this sweep._", ""]
    out += [
        f"Each looped group is paired with the finished dense group whose {count} count is nearest. "
        "The count gap is (dense - looped) / looped; the ppl gap is the dense model's validation "
        "perplexity over the looped one's, minus 1 (negative: the dense model is better), with "
        "Welch's 95% interval over seeds.",
        "",
    ]
    rows = []
    for g in looped:
        pair = nearest_dense(g, dense, key)
        assert pair is not None
        count_of = (lambda x: _short(x) + "FLOPs") if count == "FLOP" else human
        gap, ci = _difference(pair, g)
        rows.append([g.label, count_of(key(g.first)), pair.label, count_of(key(pair.first)),
                     _pct(_gap(key(pair.first), key(g.first))), mean_sd(stat(_loss(g))),
                     mean_sd(stat(_loss(pair))), gap, ci])  # fmt: skip
    headers = ["looped group", count, "paired dense group", f"dense {count}", "count gap",
               "looped val loss", "dense val loss", "ppl gap", "95% CI"]  # fmt: skip
    return [*out, *table(headers, rows, [h not in ("looped group", "paired dense group") for h in headers])]


def _without_seed(change: str | None) -> str:
    parts = [p for p in (change or "").split("; ") if p and not p.startswith(f"{SEED}=")]
    return "; ".join(parts)


def _ablation_section(groups: list[Group], done: list[Group]) -> list[str]:
    by_run = {r.id: g for g in groups for r in g.runs}
    finished = {g.label: g for g in done}
    variants = [g for g in groups if g.first.role == "extra" and g.first.ref is not None]
    out = ["## Ablations and variants against their base", ""]
    if not variants:
        return [*out, "_No extra runs with an `of:` config in this sweep._", ""]
    out += [
        "Δ ppl is the variant's validation perplexity over its base's, minus 1 (from the seed means "
        "of the loss), with Welch's 95% interval; the change is the difference of the resolved specs.",
        "",
    ]
    rows = []
    for g in variants:
        base = by_run.get(g.first.ref)
        r, b = g.first, base.first if base else None
        ok = base is not None and g.label in finished and base.label in finished
        delta, ci = _difference(finished[g.label], finished[base.label]) if ok else ("–", "–")
        change = _without_seed(r.change)
        rows.append([g.label, base.label if base else r.ref, f"`{change}`" if change else "(same spec)",
                     human(r.stored) + (f" ({_pct(_gap(r.stored, b.stored))})" if b else ""),
                     human(r.effective) + (f" ({_pct(_gap(r.effective, b.effective))})" if b else ""),
                     mean_sd(stat(_loss(finished[g.label]))) if g.label in finished else "–", delta, ci])  # fmt: skip
    headers = ["group", "of", "change", "stored", "effective", "val loss", "Δ ppl", "95% CI"]
    return [*out, *table(headers, rows, [h not in ("group", "of", "change") for h in headers])]


def _loop_curve(g: Group, evals: Evals, column: int) -> dict[int, list[float]]:
    """loop count -> that count's values over the group's seeds (column 1: loss, 2: ppl)."""
    out: dict[int, list[float]] = {}
    for r in g.runs:
        for row in evals.get(r.id, []):
            out.setdefault(row[0], []).append(row[column])
    return out


def _loops_section(groups: list[Group], evals: Evals) -> list[str]:
    out = ["## Variable loop count at inference", ""]
    evaluated = [g for g in groups if any(r.id in evals for r in g.runs)]
    if not evaluated:
        return [*out, "_No loop evaluations (set `eval_loops: true` in the sweep file)._", ""]
    counts = sorted({row[0] for g in evaluated for r in g.runs for row in evals.get(r.id, [])})
    out += [
        "Validation perplexity of each finished looped group at other loop counts, mean over seeds "
        "(* = trained R; best = the count with the lowest mean).",
        "",
    ]
    rows = []
    for g in evaluated:
        ppl = {n: mean(v) for n, v in _loop_curve(g, evals, 2).items()}
        R = g.first.loops
        cells = [("–" if n not in ppl else f"{ppl[n]:.2f}" + ("*" if n == R else "")) for n in counts]
        rows.append([g.label, R, min(ppl, key=ppl.get), *cells])
    return [
        *out,
        *table(["group", "R", "best", *map(str, counts)], rows, [False, True, True, *[True] * len(counts)]),
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


def _plots_section(
    every: list[Group], done: list[Group], metrics: dict[str, list[dict]], evals: Evals, out: Path
) -> list[str]:
    """Draw each plot into ``out`` as a PNG; its heading, then the image or why it is not drawn."""
    lines = ["## Plots", ""]
    curves = done or every  # seeds still training would cut a group's curves at their last step
    for title, filename, draw in (
        ("Loss curves", "loss_curves.png", lambda: _loss_curves(curves, metrics)),
        ("Validation loss vs parameters", "val_vs_params.png", lambda: _val_vs_params(done)),
        ("Validation perplexity vs loops at inference", "variable_r.png", lambda: _variable_r(done, evals)),
        ("Fixed against sampled training depth", "depth.png", lambda: _depth(done, metrics, evals)),
        ("rho over training", "rho.png", lambda: _rho(curves, metrics)),
    ):
        fig = draw()
        if isinstance(fig, str):
            shown = f"_Not drawn: {fig}._"
        else:
            fig.savefig(out / filename, dpi=DPI)
            shown = f"![{title}]({filename})"
        lines += [f"### {title}", "", shown, ""]
    return lines


def _band(ax, xs: list, per_x: list[list[float]], color, label: str | None = None, **style) -> None:
    """The mean over seeds as a line, and the lowest to the highest seed as a shaded band."""
    ax.plot(xs, [mean(v) for v in per_x], color=color, label=label, **style)
    if any(len(v) > 1 for v in per_x):
        ax.fill_between(xs, [min(v) for v in per_x], [max(v) for v in per_x], color=color, alpha=0.2, lw=0)


def _series(g: Group, metrics: dict[str, list[dict]], key: str) -> tuple[list[int], list[list[float]]]:
    """Steps every seed logged ``key`` at, and each step's values over the seeds."""
    per_run = [{m["step"]: m[key] for m in metrics.get(r.id, []) if m.get(key) is not None} for r in g.runs]
    per_run = [p for p in per_run if p]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return steps, [[p[s] for p in per_run] for s in steps]


def _loss_curves(every: list[Group], metrics):
    series = [(g, _series(g, metrics, "loss"), _series(g, metrics, "val_loss")) for g in every]
    series = [x for x in series if x[1][0]]
    if not series:
        return "no metrics yet"
    fig, (train_ax, val_ax) = _figure(2)
    for (g, train, val), color in zip(series, _colors(len(series)), strict=True):
        _band(train_ax, *train, color, label=g.label, lw=1)
        if val[0]:
            _band(val_ax, *val, color, marker="o", ms=3, lw=1)
    for ax, name in ((train_ax, "train loss"), (val_ax, "validation loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name + " (band: seeds)")
        ax.grid(alpha=0.3)
    _legend(fig, [train_ax])
    return fig


def _val_vs_params(done: list[Group]):
    if not done:
        return "no finished runs"
    from matplotlib.ticker import FuncFormatter

    fig, axes = _figure(2)
    kinds = (
        ("looped (grid)", "o", lambda r: r.looped and r.role == "grid"),
        ("looped (extra)", "^", lambda r: r.looped and r.role != "grid"),
        ("dense", "s", lambda r: not r.looped),
    )
    for ax, count in zip(axes, ("stored", "effective"), strict=True):
        for label, marker, member in kinds:
            pts = [g for g in done if member(g.first)]
            if pts:
                xs = [getattr(g.first, count) for g in pts]
                ys = [stat(_loss(g)) for g in pts]
                spread = [s.sd or 0.0 for s in ys]
                ax.errorbar(xs, [s.mean for s in ys], yerr=spread, fmt=marker, capsize=2, label=label)
                if len(done) <= 24:
                    for g, x, y in zip(pts, xs, ys, strict=True):
                        ax.annotate(
                            g.label,
                            (x, y.mean),
                            xytext=(3, 3),
                            textcoords="offset points",
                            fontsize=6,
                            alpha=0.7,
                        )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _short(x)))
        xs = [getattr(g.first, count) for g in done]
        narrow = max(xs) / min(xs) < 10  # within a decade: label the minor ticks too
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _, narrow=narrow: _short(x) if narrow else ""))
        ax.set_xlabel(f"{count} parameters")
        ax.set_ylabel("final validation loss (bar: ±1 sd over seeds)")
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return fig


def _loop_axes(ax, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("loops at inference (star: trained R)")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _draw_loops(ax, shown: list[tuple[Group, str]], evals: Evals, column: int) -> None:
    for (g, name), color in zip(shown, _colors(len(shown)), strict=True):
        curve = sorted(_loop_curve(g, evals, column).items())
        loops = [n for n, _ in curve]
        _band(ax, loops, [v for _, v in curve], color, label=name, marker=".", lw=1)
        if g.first.loops in loops:
            ax.plot(
                [g.first.loops], [mean(curve[loops.index(g.first.loops)][1])], marker="*", ms=10, color=color
            )


def _variable_r(done: list[Group], evals: Evals):
    evaluated = [g for g in done if any(r.id in evals for r in g.runs)]
    if not evaluated:
        return "no loop evaluations in this sweep"
    fig, (ax,) = _figure(1)
    _draw_loops(ax, [(g, f"{g.label} (R={g.first.loops})") for g in evaluated], evals, 2)
    _loop_axes(ax, "validation perplexity (band: seeds)")
    _legend(fig, [ax])
    return fig


def _sampled(g: Group, metrics: dict[str, list[dict]]) -> bool:
    """Whether the group trained at a drawn depth (its metrics record the depths drawn)."""
    return any(m.get("depths") for r in g.runs for m in metrics.get(r.id, []))


def _depth(done: list[Group], metrics, evals: Evals):
    """Each loop-evaluated group trained at a sampled depth beside the group it is a variant of."""
    by_run = {r.id: g for g in done for r in g.runs}
    shown: list[tuple[Group, str]] = []
    for g in done:
        base = by_run.get(g.first.ref or "")
        if not _sampled(g, metrics) or base is None or not all(r.id in evals for r in (*g.runs, *base.runs)):
            continue
        shown += [(base, f"{base.label} (fixed R={base.first.loops})"), (g, f"{g.label} (sampled depth)")]
    if not shown:
        return "no loop-evaluated group trained at a sampled depth beside a fixed-depth base"
    fig, (ax,) = _figure(1)
    unique = {name: (g, name) for g, name in shown}  # a base shared by two sampled groups: once
    _draw_loops(ax, list(unique.values()), evals, 1)
    _loop_axes(ax, "validation loss (band: seeds)")
    _legend(fig, [ax])
    return fig


def _rho(every: list[Group], metrics):
    series = [(g, _series(g, metrics, "rho")) for g in every]
    series = [(g, pts) for g, pts in series if pts[0]]
    if not series:
        return "no run logged rho (no LTI gate)"
    fig, (ax,) = _figure(1)
    for (g, pts), color in zip(series, _colors(len(series)), strict=True):
        _band(ax, *pts, color, label=g.label, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("rho = max sigmoid(a) (band: seeds)")
    ax.grid(alpha=0.3)
    _legend(fig, [ax])
    return fig
