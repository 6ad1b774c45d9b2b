"""Parameter and FLOP accounting: the component kinds' formulas summed over the graph (no torch).

Each sharing group carries the parameters and forward FLOPs of one call, from its kinds'
formulas (:mod:`cartspec.components`); this module only sums them (docs/accounting.md):

- stored: unique parameters; a sharing group counts once. Buffers are not parameters.
- active: the stored parameters one token touches: a mixture of experts counts its router, the
  top-k routed experts and the shared ones (equal to stored without one).
- effective: sum over sharing groups of size x calls in one forward pass, i.e. the size of the
  equivalent unrolled network. A tied head reads the embedding table but is no second call.
- effective (paper): the CART author's ``count_parameters()``: token-mixing blocks (layers,
  core, anchor) count once per call; loop control (gate, state mix, loop embedding), norms and
  embeddings once.
- forward FLOPs per sequence, the paper's way: each group's FLOPs per call (2 x parameters x T,
  plus 4 x T^2 x d per attention) counted as the paper counts its parameters; the embedding and
  the head are left out (the head's 2 x V x d per token is reported on its own).
  Training = 3 x forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cartspec.graph import ModelGraph
from cartspec.schedule import schedule

EMBEDDING_KINDS = ("embedding", "value_embedding", "head")  # lookup tables and the head


@dataclass(frozen=True)
class BlockRow:
    name: str
    stored: int
    uses: int
    effective: int


@dataclass(frozen=True)
class GroupRow:
    name: str
    owner: str
    members: list[str]
    stored: int
    uses: int
    effective: int


@dataclass(frozen=True)
class Flops:
    seq_len: int
    forward_per_sequence: int
    head_per_sequence: int
    train_per_token: float
    attention_uses: int


@dataclass(frozen=True)
class DepthCost:
    """What a sampled training depth costs: loops run without gradients cost a forward pass,
    loops with gradients forward and backward; per-sequence depths cost the batch's longest."""

    kind: str
    per: str
    backprop: int | None
    mean_depth: float
    max_depth: int
    train_per_token_expected: float  # training FLOPs per token, expected over the draws
    train_per_token_max: float  # ... at the deepest draw
    effective_mean: float  # unrolled parameters at the mean depth (the peers' "will unfold to")
    effective_max: int  # ... at the deepest draw ("could unfold to")
    per_loop_flops: int  # forward FLOPs per sequence that one more loop adds
    static_flops: int  # forward FLOPs per sequence of everything else

    def train_per_token(self, without: float, with_grad: float, seq_len: int) -> float:
        """Training FLOPs per token of a step running these loops without and with gradients."""
        return train_flops_per_token(self.static_flops, self.per_loop_flops, without, with_grad, seq_len)


@dataclass(frozen=True)
class ParamReport:
    name: str
    stored: int
    active: int  # parameters touched per token: a mixture of experts' top-k routed and shared experts
    effective: int
    effective_paper: int
    embedding: int
    non_embedding: int
    blocks: list[BlockRow]
    groups: list[GroupRow]
    flops: Flops
    depth: DepthCost | None  # None: a fixed depth with full backprop (or no loop)
    unrolled: dict[str, int] | None  # the peers' unrolled counts at R, by convention; None: no loop

    def to_json(self) -> dict:
        return asdict(self)


def account(graph: ModelGraph) -> ParamReport:
    """Every count of the report, from the graph's groups and uses."""
    m = graph.arch.model
    groups = graph.groups.values()
    calls = {g.name: graph.calls(g.name) for g in groups}
    counted = {g.name: 1 if g.loop_control else calls[g.name] for g in groups}  # the paper's way

    stored = sum(g.params for g in groups)
    effective = sum(g.params * calls[g.name] for g in groups)
    paper = sum(g.params * counted[g.name] for g in groups)
    embedding = sum(g.params for g in groups if g.kind in EMBEDDING_KINDS)

    blocks: dict[str, list[int]] = {}  # name -> [stored, uses, effective], in execution order
    for u in graph.uses:
        row = blocks.setdefault(u.block, [0, 0, 0])
        if u.call:
            row[1] += 1
            row[2] += graph.groups[u.group].params
    for g in groups:
        blocks.setdefault(g.block, [0, 0, 0])[0] += g.params

    attention_uses = sum(u.attention for u in graph.uses)
    T = m.max_seq_len
    forward = sum(g.flops * counted[g.name] for g in groups)
    return ParamReport(
        name=graph.arch.name,
        stored=stored,
        active=stored - sum(g.inactive for g in groups),
        effective=effective,
        effective_paper=paper,
        embedding=embedding,
        non_embedding=stored - embedding,
        blocks=[BlockRow(name, *row) for name, row in blocks.items()],
        groups=[
            GroupRow(g.name, g.owner, list(g.members), g.params, calls[g.name], g.params * calls[g.name])
            for g in groups
        ],
        flops=Flops(
            seq_len=T,
            forward_per_sequence=forward,
            head_per_sequence=2 * m.vocab_size * m.d_model * T,
            train_per_token=3 * forward / T,
            attention_uses=attention_uses,
        ),
        depth=_depth_cost(graph, forward, effective),
        unrolled=_unrolled(graph, stored) if graph.arch.looped else None,
    )


UNROLLED = {
    "core_only": "stored + (R - 1) x core: Huginn's and Parcae's count (their adapters static)",
    "recurrent_block": "stored + (R - 1) x everything a loop runs: OpenMythos's count",
}


def _unrolled(graph: ModelGraph, stored: int) -> dict[str, int]:
    """The looped peers' own unrolled counts: stored parameters, plus the groups a loop runs once
    per extra loop (the core's alone, or the whole recurrent block's). Unlike ``effective``, a
    module used twice outside the loop counts once, as the peers count it."""
    loop_calls: dict[str, int] = {}
    for u in graph.uses:
        if u.call and u.loop is not None:
            loop_calls[u.group] = loop_calls.get(u.group, 0) + 1

    def unrolled(only_core: bool) -> int:
        extra = (
            g.params * (loop_calls[g.name] - 1)
            for g in graph.groups.values()
            if g.name in loop_calls and (g.kind == "core" or not only_core)
        )
        return stored + sum(extra)

    return {"core_only": unrolled(True), "recurrent_block": unrolled(False)}


def _depth_cost(graph: ModelGraph, forward: int, effective: int) -> DepthCost | None:
    """The schedule's cost, from what one loop adds (the uses of loop 0) at the spec's R."""
    plan = schedule(graph.arch.spec)
    if plan is None or plan.fixed:
        return None
    loop = [graph.groups[u.group] for u in graph.uses if u.loop == 0 and u.call]
    loop_flops = sum(g.flops for g in loop if not g.loop_control)  # loop control counts once, as the paper's
    loop_params = sum(g.params for g in loop)
    R, T = graph.arch.core.loops, graph.arch.model.max_seq_len
    static = forward - R * loop_flops
    mean = plan.mean_depth

    def per_token(without: float, with_grad: float) -> float:
        return train_flops_per_token(static, loop_flops, without, with_grad, T)

    return DepthCost(
        kind=plan.kind,
        per=plan.per,
        backprop=plan.backprop,
        mean_depth=mean,
        max_depth=plan.max,
        train_per_token_expected=per_token(*plan.expected_split(graph.arch.spec.train.micro_batch)),
        train_per_token_max=per_token(*plan.split(plan.max)),
        effective_mean=effective + (mean - R) * loop_params,
        effective_max=effective + (plan.max - R) * loop_params,
        per_loop_flops=loop_flops,
        static_flops=static,
    )


def train_flops_per_token(
    static: int, per_loop: int, without: float, with_grad: float, seq_len: int
) -> float:
    """Training FLOPs per token of a step running loops without and with gradients: forward and
    backward (3x) for everything with gradients, forward only for the loops without."""
    return (3 * static + (3 * with_grad + without) * per_loop) / seq_len
