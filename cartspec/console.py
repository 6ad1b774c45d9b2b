"""What the commands print on the terminal: parameter tables, graphs (text, dot, JSON), training
summaries and loop rows (rich is imported only here)."""

from __future__ import annotations

import json
import math

from cartspec.accounting import UNROLLED, ParamReport
from cartspec.graph import ModelGraph


def human(n: float) -> str:
    """1_234_567 -> '1.23M' (exact figures stay in --json)."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def print_params(report: ParamReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    blocks = Table(title=f"{report.name}: parameters by block", title_justify="left")
    for col in ("block", "stored", "uses", "effective"):
        blocks.add_column(col, justify="left" if col == "block" else "right")
    for b in report.blocks:
        blocks.add_row(b.name, f"{b.stored:,}", str(b.uses), f"{b.effective:,}")
    blocks.add_section()
    blocks.add_row("total", f"{report.stored:,}", "", f"{report.effective:,}", style="bold")
    console.print(blocks)

    shared = [g for g in report.groups if g.uses > 1 or len(g.members) > 1]
    if shared:
        groups = Table(title="sharing groups read more than once", title_justify="left")
        for col in ("group", "members", "stored", "uses", "effective"):
            groups.add_column(col, justify="left" if col in ("group", "members") else "right")
        for g in shared:
            members = (
                ", ".join(g.members)
                if len(g.members) <= 4
                else f"{g.members[0]} … {g.members[-1]} ({len(g.members)})"
            )
            groups.add_row(g.name, members, f"{g.stored:,}", str(g.uses), f"{g.effective:,}")
        console.print(groups)

    f = report.flops
    summary = Table(show_header=False, box=None, padding=(0, 2))
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    summary.add_column(justify="left")
    rows = [
        ("stored", report.stored, "unique parameters (shared and tied counted once)"),
        ("active", report.active, "touched per token (MoE: top-k + shared experts)"),
        ("effective", report.effective, "size x calls per forward: the unrolled network"),
        ("effective (paper)", report.effective_paper, "the CART author's count_parameters()"),
        ("embedding", report.embedding, "vocab x d (once when tied), value-embedding tables"),
        ("non-embedding", report.non_embedding, "stored - embedding"),
    ]
    for label, value, note in rows:
        summary.add_row(label, f"{value:,}", f"[dim]{human(value)}  {note}[/dim]")
    summary.add_row(
        "forward FLOPs / seq",
        f"{f.forward_per_sequence / 1e9:,.1f} G",
        f"[dim]T={f.seq_len}, {f.attention_uses} attention uses, paper convention[/dim]",
    )
    summary.add_row(
        "head FLOPs / seq",
        f"{f.head_per_sequence / 1e9:,.1f} G",
        "[dim]2 x V x d x T, not in the line above[/dim]",
    )
    summary.add_row("train FLOPs / token", f"{f.train_per_token / 1e9:,.3f} G", "[dim]3 x forward / T[/dim]")
    d = report.depth
    if d is not None:
        per = "per sequence" if d.per == "sequence" else "per step"
        grad = f", gradients through the last {d.backprop}" if d.backprop else ""
        note = f"[dim]{d.kind} depth {per}, mean {d.mean_depth:.2f}, max {d.max_depth}{grad}[/dim]"
        summary.add_row("train FLOPs / token (depth)", f"{d.train_per_token_expected / 1e9:,.3f} G", note)
        summary.add_row("  at the deepest draw", f"{d.train_per_token_max / 1e9:,.3f} G", "")
        summary.add_row(
            "effective at mean depth", f"{d.effective_mean:,.0f}", "[dim]unrolled: will unfold to[/dim]"
        )
        summary.add_row(
            "effective at max depth", f"{d.effective_max:,}", "[dim]unrolled: could unfold to[/dim]"
        )
    for convention, count in (report.unrolled or {}).items():
        summary.add_row(f"unrolled ({convention})", f"{count:,}", f"[dim]{UNROLLED[convention]}[/dim]")
    console.print(summary)


def print_json(obj: object) -> None:
    """Strict JSON: a NaN or infinite number is written as null (bare NaN is not JSON)."""
    print(json.dumps(finite(obj), indent=2, allow_nan=False))


def finite(obj: object) -> object:
    """``obj`` with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(value) for value in obj]
    return obj


def graph_text(graph: ModelGraph) -> str:
    """One line per use in execution order: node, module, sharing group, inputs."""
    inputs: dict[str, list[str]] = {}
    for a, b in graph.edges:
        inputs.setdefault(b, []).append(a)
    width = max(len(u.name) for u in graph.uses)
    lines = [f"# {graph.arch.name}: {len(graph.uses)} uses, {len(graph.groups)} sharing groups"]
    for u in graph.uses:
        group = graph.groups[u.group]
        tag = "" if u.call else "  (tied: reads the table, no call)"
        lines.append(
            f"{u.name:<{width}}  group={u.group} ({group.params:,} params)  <- {', '.join(inputs.get(u.name, [])) or 'tokens'}{tag}"
        )
    return "\n".join(lines)


def graph_dot(graph: ModelGraph) -> str:
    """Graphviz DOT: uses as nodes, coloured by sharing group."""
    lines = [
        f'digraph "{graph.arch.name}" {{',
        "  rankdir=TB; node [shape=box, fontname=monospace];",
    ]
    palette = [
        "#cfe2f3",
        "#d9ead3",
        "#fff2cc",
        "#f4cccc",
        "#d9d2e9",
        "#fce5cd",
        "#d0e0e3",
        "#ead1dc",
    ]
    colour = {g: palette[i % len(palette)] for i, g in enumerate(graph.groups)}
    for u in graph.uses:
        lines.append(
            f'  "{u.name}" [label="{u.name}\\n{u.group}", style=filled, fillcolor="{colour[u.group]}"];'
        )
    for a, b in graph.edges:
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines)


def graph_json(graph: ModelGraph) -> dict:
    """networkx node-link data of the graph, plus the sharing groups."""
    import networkx as nx

    data = nx.node_link_data(graph.to_networkx(), edges="edges")
    data["groups"] = {
        g.name: {"owner": g.owner, "kind": g.kind, "params": g.params, "members": g.members}
        for g in graph.groups.values()
    }
    return data


def print_train_summary(summary) -> None:
    """The end-of-training report: losses, perplexity, rho, parameters, tokens, time."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{summary.name}: trained {summary.steps} steps -> {summary.run_dir}",
        show_header=False,
        title_justify="left",
    )
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("train loss (last step)", "-" if summary.train_loss is None else f"{summary.train_loss:.4f}"),
        ("validation loss", "-" if summary.val_loss is None else f"{summary.val_loss:.4f}"),
        ("validation perplexity", "-" if summary.val_ppl is None else f"{summary.val_ppl:.2f}"),
        ("rho = max sigmoid(a)", "-" if summary.rho is None else f"{summary.rho:.4f}"),
        ("stored parameters", f"{summary.stored:,}"),
        ("effective parameters", f"{summary.effective:,}"),
        ("tokens seen", f"{summary.tokens:,}"),
        ("wall time", f"{summary.wall_s:.1f} s"),
        ("throughput", f"{summary.tokens_per_s:,.0f} tokens/s"),
    ]
    for label, value in rows:
        table.add_row(label, value)
    Console().print(table)


def print_loop_rows(spec, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    core, depth = spec.blocks.core, spec.train.depth
    trained = core.loops if core else None
    title = "no loop" if core is None else f"trained at R={trained}"
    if core is not None and depth.kind != "fixed":
        title = f"trained at {depth.kind} depths (per {depth.per})"
    table = Table(title=f"{spec.name}: validation by loop count ({title})", title_justify="left")
    for col in ("loops", "val loss", "val ppl", "trained share"):
        table.add_column(col, justify="right")
    for r in rows:
        loops = "–" if r.loops is None else f"{r.loops}{' *' if r.loops == trained else ''}"
        share = "–" if r.trained_share is None else f"{r.trained_share:.1%}"
        table.add_row(loops, f"{r.val_loss:.4f}", f"{r.val_ppl:.2f}", share)
    Console().print(table)


def print_task_rows(spec, rows) -> None:
    """``eval --tasks``: one row per loop count, one column per task and metric (stderr in JSON)."""
    from rich.console import Console
    from rich.table import Table

    core = spec.blocks.core
    columns = [
        (task, metric)
        for task, metrics in rows[0].results.items()
        for metric in metrics
        if not metric.endswith("_stderr") and metric != "sample_len"
    ]
    title = "no loop" if core is None else f"trained at R={core.loops}"
    table = Table(title=f"{spec.name}: lm-eval tasks by loop count ({title})", title_justify="left")
    table.add_column("loops", justify="right")
    for task, metric in columns:
        table.add_column(f"{task}\n{metric}", justify="right", overflow="fold")
    for r in rows:
        loops = "–" if r.loops is None else f"{r.loops}{' *' if core and r.loops == core.loops else ''}"
        table.add_row(loops, *(f"{r.results[task].get(metric, math.nan):.4f}" for task, metric in columns))
    Console().print(table)
