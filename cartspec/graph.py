"""The model graph: one node per module use in a forward pass, each owned by a sharing group.

Nodes are uses (``embedding``, ``prelude.0`` … ``core.loop[r]`` … ``head``) in execution order,
edges are dataflow, and every use names the sharing group whose parameters it reads. The graph
is built from a resolved architecture that passed :mod:`cartspec.checks`; it checks nothing.

The graph is plain Python on the validate/params/compile path (importing networkx alone costs
about 0.35 s, more than the whole ``params`` budget); :meth:`ModelGraph.to_networkx` hands the
same graph to networkx for ``cartspec graph``, the tests and any analysis a user writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cartspec.architecture import Architecture, share_members

if TYPE_CHECKING:
    import networkx as nx


@dataclass
class Group:
    """A sharing group: one set of parameters, held by ``owner`` and read by ``members``."""

    name: str
    owner: str  # module path in the generated model
    block: str  # the report row its parameters count under
    kind: str  # embedding | value_embedding | layer | core | anchor | gate | state_mix | loop_embedding | readout | norm | head
    parts: dict[str, int]  # parameter breakdown, e.g. {"attn": ..., "ffn": ..., "norms": ...}
    flops: int  # forward FLOPs per sequence of one call (0 for the embedding and head)
    loop_control: bool = False  # gate, state mix, loop embedding: the paper counts them once
    members: list[str] = field(default_factory=list)
    inactive: int = 0  # parameters a token does not touch: routed experts it did not choose

    @property
    def params(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class Use:
    """One execution of a module in one forward pass."""

    name: str  # graph node, e.g. "core.loop[3]"
    block: str  # report row
    module: str  # module path called, e.g. "core" or "core.3"
    group: str  # the sharing group whose parameters it reads
    call: bool = True  # False for the tied head: it reads the embedding table, it is no call of it
    attention: int = 0  # attention operations (T x T score matrices) in this use
    loop: int | None = None


@dataclass
class ModelGraph:
    arch: Architecture
    groups: dict[str, Group]
    uses: list[Use]
    edges: list[tuple[str, str]]

    def group_of(self, module: str) -> Group:
        return next(g for g in self.groups.values() if module in g.members)

    def calls(self, group: str) -> int:
        return sum(1 for u in self.uses if u.group == group and u.call)

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a networkx DiGraph: node attributes are the use's fields plus its group's."""
        import networkx as nx

        g = nx.DiGraph(name=self.arch.name)
        for u in self.uses:
            grp = self.groups[u.group]
            g.add_node(
                u.name,
                block=u.block,
                module=u.module,
                group=u.group,
                call=u.call,
                attention=u.attention,
                loop=u.loop,
                kind=grp.kind,
                params=grp.params,
            )
        g.add_edges_from(self.edges)
        return g


# ----------------------------------------------------------------------------- building


def build_graph(arch: Architecture) -> ModelGraph:
    """One node per module use in execution order; ``share:`` groups merged (already checked)."""
    m = arch.model
    T = m.max_seq_len
    groups: dict[str, Group] = {}
    uses: list[Use] = []
    edges: list[tuple[str, str]] = []

    def add_group(
        name: str,
        kind: str,
        parts: dict[str, int],
        flops: int,
        loop_control: bool = False,
        inactive: int = 0,
        block: str = "",
    ) -> None:
        block = block or name.split(".")[0]
        groups[name] = Group(name, name, block, kind, parts, flops, loop_control, [name], inactive)

    def use(u: Use, after: str | None) -> str:
        uses.append(u)
        if after is not None:
            edges.append((after, u.name))
        return u.name

    add_group("embedding", "embedding", {"table": m.vocab_size * m.d_model}, 0)
    last = use(Use("embedding", "embedding", "embedding", "embedding"), None)
    outputs = {"embedding": last}  # block -> its output node, for the anchor's input edge
    for stage, values, kv_heads in arch.value_stages():  # lookups of the token ids: no FLOPs
        name = f"{stage}_values"
        add_group(name, "value_embedding", {"tables": values.table_params(m, kv_heads)}, 0)
        use(Use(name, name, name, name), "embedding")

    def run_stage(name: str, prev: str) -> str:
        stage = arch.stage(name)
        if stage is None:
            return prev
        for i in range(stage.layers):
            module = f"{name}.{i}"
            values = stage.values if stage.gated(i) else None
            parts = arch.layer_parts(stage.attention, stage.placement, values)
            add_group(module, "layer", parts, arch.layer_flops(stage.attention, stage.placement, values))
            prev = use(Use(module, name, module, module, attention=1), prev)
            if values is not None:
                edges.append((f"{name}_values", module))
        if stage.output_norm:
            norm = f"{name}_norm"
            add_group(
                norm, "norm", {"weight": m.norm.params(m.d_model)}, m.norm.flops(m.d_model, T), block=name
            )
            prev = use(Use(norm, name, norm, norm), prev)
        outputs[name] = prev
        return prev

    last = run_stage("prelude", run_stage("stack", last))
    if arch.anchor is not None:
        add_group("anchor", "anchor", {"kv": arch.anchor.params(m)}, arch.anchor.flops(m, T))
        if arch.anchor.recompute == "never":
            use(Use("anchor", "anchor", "anchor", "anchor"), outputs[arch.anchor.from_])
    norm = {"weight": m.norm.params(m.d_model)}, m.norm.flops(m.d_model, T)
    if arch.core is not None:
        last = _run_core(arch, last, add_group, use, edges)
        if arch.core.out_norm:
            add_group("core_out_norm", "norm", *norm)
            last = use(Use("core_out_norm", "core_out_norm", "core_out_norm", "core_out_norm"), last)
        readout = arch.core.readout
        if readout is not None:  # once, after the last loop
            add_group(
                "readout",
                "readout",
                {readout.weights: readout.params(m.d_model)},
                readout.flops(m.d_model, T),
            )
            last = use(Use("readout", "readout", "readout", "readout"), last)
    last = run_stage("coda", last)

    add_group("norm", "norm", *norm)
    last = use(Use("norm", "norm", "norm", "norm"), last)
    if m.tie_embeddings:
        use(Use("head", "head", "embedding", "embedding", call=False), last)
    else:
        add_group("head", "head", {"weight": m.vocab_size * m.d_model}, 0)
        use(Use("head", "head", "head", "head"), last)

    graph = ModelGraph(arch, groups, uses, edges)
    _apply_share_groups(graph)
    return graph


def _run_core(arch: Architecture, prev: str, add_group, use, edges) -> str:
    m, core, anchor = arch.model, arch.core, arch.anchor
    values = core.value_embedding
    gates = values.layers if values is not None else []
    parts: dict[str, int] = {}
    for j in range(core.layers):
        for k, v in arch.layer_parts(
            core.attention, core.norm_placement, values if j in gates else None, core.ffn
        ).items():
            parts[k] = parts.get(k, 0) + v
    flops = sum(
        arch.layer_flops(core.attention, core.norm_placement, values if j in gates else None, core.ffn)
        for j in range(core.layers)
    )
    for module in ["core"] if core.shared else [f"core.{r}" for r in range(core.loops)]:
        add_group(module, "core", dict(parts), flops, inactive=core.layers * arch.layer_inactive(core.ffn))
    modules = [p for p in arch.loop_parts() if p.attribute]  # with weights: gate, state mix, loop embedding
    for part in modules:
        parts = {part.weights: part.params(m.d_model)}
        add_group(
            part.attribute, part.attribute, parts, part.flops(m.d_model, m.max_seq_len), part.loop_control
        )
    before = [p.attribute for p in modules if not p.on_output]
    after = [p.attribute for p in sorted((p for p in modules if p.on_output), key=lambda p: p.output_order)]

    state = prev
    for r in range(core.loops):
        loop = f"core.loop[{r}]"
        step = state
        for attribute in before:
            step = use(Use(f"{loop}.{attribute}", attribute, attribute, attribute, loop=r), step)
        if anchor is not None and anchor.recompute == "every_loop":
            use(Use(f"{loop}.anchor", "anchor", "anchor", "anchor", loop=r), step)
            edges.append((f"{loop}.anchor", loop))
        module = "core" if core.shared else f"core.{r}"
        step = use(Use(loop, "core", module, module, attention=core.layers, loop=r), step)
        if core.attention.reads_anchor and anchor is not None and anchor.recompute == "never":
            edges.append(("anchor", loop))
        if values is not None:
            edges.append(("core_values", loop))
        for attribute in after:
            step = use(Use(f"{loop}.{attribute}", attribute, attribute, attribute, loop=r), step)
        state = step
    return state


def _apply_share_groups(graph: ModelGraph) -> None:
    """Merge the spec's explicit ``share:`` groups into the graph: members read one owner."""
    modules = list(graph.arch.shareable())
    for share in graph.arch.spec.share:
        members = list(dict.fromkeys(mod for named in share_members(share, modules) for mod in named))
        first = graph.groups[members[0]]
        merged = Group(
            share.name,
            first.owner,
            first.block,
            first.kind,
            dict(first.parts),
            first.flops,
            first.loop_control,
            members,
            first.inactive,
        )
        for module in members:
            del graph.groups[module]
        graph.groups[share.name] = merged
        graph.uses[:] = [
            Use(u.name, u.block, u.module, share.name, u.call, u.attention, u.loop)
            if u.module in members
            else u
            for u in graph.uses
        ]
