"""Dense baselines at parameter or compute parity with a looped model (no torch).

The candidate dense stacks (full-rank MHA with RoPE in every layer, the looped model's FFN, norm,
embedding and recipe) are built in memory, counted with :mod:`cartspec.accounting`, and the one
the rule picks is written out as a standalone spec. Counts grow with the layer count and with
the width, so the search walks up until it passes the target.

Rules, and why the defaults differ by match: the CART paper pairs CART d=1024 with Dense 7L at
stored parity (122.7M <= 125.1M) and with Dense 12L at effective parity (186.9M >= 179.0M), so
a stored baseline gets no more storage than the looped model (``at-most``), and an effective or
FLOP baseline gets at least the looped model's effective size or compute (``at-least``).
``nearest`` picks the closer of the two neighbours (it would pick 11L at effective parity).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from cartspec.accounting import ParamReport
from cartspec.errors import UserError
from cartspec.resolve import Resolved, resolve_data

Match = Literal["stored", "effective", "flops"]
Rule = Literal["nearest", "at-most", "at-least"]
Vary = Literal["layers", "width"]

MATCHES: tuple[str, ...] = ("stored", "effective", "flops")
RULES: tuple[str, ...] = ("nearest", "at-most", "at-least")
VARIES: tuple[str, ...] = ("layers", "width")
DEFAULT_RULE: dict[str, str] = {"stored": "at-most", "effective": "at-least", "flops": "at-least"}
MAX_LAYERS = 1024  # the schema's bound on a stack
MAX_D_MODEL = 1 << 16

WHAT = {
    "stored": "stored parameters",
    "effective": "effective parameters",
    "flops": "forward FLOPs per sequence",
}
WHY = {
    "at-most": "the largest dense model with no more {what} than the looped one",
    "at-least": "the smallest dense model with at least the looped one's {what}",
    "nearest": "the dense model whose {what} are nearest the looped one's",
}


@dataclass(frozen=True)
class Candidate:
    """One dense stack: its shape, its count under the match, and its spec data."""

    layers: int
    d_model: int
    count: int
    report: ParamReport
    data: dict[str, Any]

    @property
    def shape(self) -> str:
        return f"{self.layers} layers, d_model {self.d_model}"


@dataclass(frozen=True)
class Parity:
    """The chosen dense baseline, the looped model it matches, and the neighbour on the other side."""

    looped: str
    match: str
    rule: str
    vary: str
    target: int
    chosen: Candidate
    other: Candidate | None

    def gap(self, candidate: Candidate) -> float:
        """Relative gap of the candidate's count to the looped model's: (dense - looped) / looped."""
        return (candidate.count - self.target) / self.target

    @property
    def name(self) -> str:
        return self.chosen.data["name"]

    def yaml(self) -> str:
        """The dense spec as a standalone YAML file with a header saying what it matches."""
        c, what = self.chosen, WHAT[self.match]
        lines = [
            f"# Dense baseline at {self.match} parity with {self.looped}, written by `cartspec parity`.",
            f"# {what}: dense {c.count:,} vs {self.looped} {self.target:,} ({self.gap(c):+.2%});",
            f"# rule {self.rule}: {WHY[self.rule].format(what=what)}.",
        ]
        if self.other is not None:
            o = self.other
            lines.append(f"# Nearest on the other side: {o.shape}, {o.count:,} ({self.gap(o):+.2%}).")
        body = yaml.safe_dump(c.data, sort_keys=False, default_flow_style=None, width=100)
        return "\n".join(lines) + "\n" + body


def measure(report: ParamReport, match: str) -> int:
    """The number a parity match compares."""
    if match == "stored":
        return report.stored
    if match == "effective":
        return report.effective
    return report.flops.forward_per_sequence


def unique_layers(resolved: Resolved) -> int:
    """Layers with their own weights in one pass of the looped model: prelude + core + coda."""
    b = resolved.spec.blocks
    return sum(
        (
            b.prelude.layers if b.prelude else 0,
            b.core.layers if b.core else 0,
            b.coda.layers if b.coda else 0,
        )
    )


def dense_data(resolved: Resolved, match: str, layers: int, d_model: int) -> dict[str, Any]:
    """The dense spec as data: the looped spec's own model: and train: sections (without the loop's
    depth schedule), one MHA stack."""
    source = resolved.loaded.data
    looped = resolved.spec.name
    suffix = f"_dense_{match}"
    model = copy.deepcopy(source["model"])
    model["d_model"] = d_model
    data: dict[str, Any] = {
        "name": looped[: 64 - len(suffix)] + suffix,
        "description": f"Dense d={d_model}, {layers} layers ({match} parity with {looped})",
        "model": model,
        "blocks": {"stack": {"layers": layers, "attention": {"kind": "mha", "rope": True, "causal": True}}},
    }
    if "train" in source:
        data["train"] = copy.deepcopy(source["train"])
        data["train"].pop("depth", None)  # a dense model has no loops to sample or truncate
    return data


def candidate(resolved: Resolved, match: str, layers: int, d_model: int) -> Candidate:
    """Build, validate and count one dense candidate in memory."""
    data = dense_data(resolved, match, layers, d_model)
    report = resolve_data(data, resolved.path).params
    return Candidate(layers, d_model, measure(report, match), report, data)


def find(
    resolved: Resolved,
    match: str,
    vary: str = "layers",
    rule: str | None = None,
    layers: int | None = None,
) -> Parity:
    """The dense baseline of ``resolved`` at ``match`` parity, chosen by ``rule``."""
    rule = _check(resolved, match, vary, rule, layers)
    target = measure(resolved.params, match)
    below, above = _bracket(resolved, match, target, _shapes(resolved, vary, layers))
    if rule == "at-most":
        chosen, other = below, above
    elif rule == "at-least":
        exact = below is not None and below.count == target
        chosen, other = (below, above) if exact else (above, below)
    else:
        pair = [c for c in (below, above) if c is not None]
        chosen = min(pair, key=lambda c: abs(c.count - target))
        other = next((c for c in pair if c is not chosen), None)
    if chosen is None:
        what = WHAT[match]
        side = "fewer" if rule == "at-most" else "as many"
        raise UserError(
            f"no dense stack by --vary {vary} has {side} {what} than {resolved.spec.name} ({target:,}); "
            f"try --rule nearest or --vary {'width' if vary == 'layers' else 'layers'}"
        )
    return Parity(resolved.spec.name, match, rule, vary, target, chosen, other)


def _check(resolved: Resolved, match: str, vary: str, rule: str | None, layers: int | None) -> str:
    """Refuse options that do not fit together or a model without a core; return the rule."""
    if match not in MATCHES:
        raise UserError(f"--match: expected one of {', '.join(MATCHES)}, got {match!r}")
    if vary not in VARIES:
        raise UserError(f"--vary: expected one of {', '.join(VARIES)}, got {vary!r}")
    rule = rule or DEFAULT_RULE[match]
    if rule not in RULES:
        raise UserError(f"--rule: expected one of {', '.join(RULES)}, got {rule!r}")
    if resolved.spec.blocks.core is None:
        raise UserError(f"{resolved.spec.name} has no core: parity baselines are for looped models")
    if layers is not None and vary != "width":
        raise UserError("--layers fixes the depth of a --vary width search; --vary layers searches it")
    return rule


def _shapes(resolved: Resolved, vary: str, layers: int | None) -> Iterator[tuple[int, int]]:
    """(layers, d_model) of the candidates, smallest first: deeper, or wider by one head."""
    m = resolved.spec.model
    if vary == "layers":
        return ((n, m.d_model) for n in range(1, MAX_LAYERS + 1))
    depth = layers or unique_layers(resolved)
    first = max(1, -(-8 // m.head_dim))  # the schema's smallest d_model is 8
    return ((depth, k * m.head_dim) for k in range(first, MAX_D_MODEL // m.head_dim + 1))


def _bracket(
    resolved: Resolved, match: str, target: int, shapes: Iterator[tuple[int, int]]
) -> tuple[Candidate | None, Candidate | None]:
    """The largest candidate with count <= target and the smallest above it (counts grow with
    size, so the walk stops at the first one above)."""
    below: Candidate | None = None
    for n, d in shapes:
        c = candidate(resolved, match, n, d)
        if c.count > target:
            return below, c
        below = c
    return below, None


def describe(parity: Parity) -> list[str]:
    """Lines for the terminal: both counts, the gap, and the neighbour on the other side."""
    from cartspec.console import human

    def fmt(n: int) -> str:
        if parity.match == "flops":
            return f"{n / 1e9:,.1f} GFLOPs/seq"
        return f"{n:,} ({human(n)})"

    what = WHAT[parity.match]
    c = parity.chosen
    lines = [
        f"match    {what}, rule {parity.rule}: {WHY[parity.rule].format(what=what)}",
        f"looped   {parity.looped:<28} {fmt(parity.target)}",
        f"dense    {c.shape:<28} {fmt(c.count)}  {parity.gap(c):+.2%}",
    ]
    if parity.other is not None:
        o = parity.other
        lines.append(f"other    {o.shape:<28} {fmt(o.count)}  {parity.gap(o):+.2%}")
    return lines
