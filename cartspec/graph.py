"""The model graph: one node per module use in a forward pass, each owned by a sharing group.

Nodes are uses (``embedding``, ``prelude.0`` … ``core.loop[r]`` … ``head``) in execution order,
edges are dataflow, and every use names the sharing group whose parameters it reads. Semantic
validation runs here, on the whole graph, and reports every problem at its spec location.

The graph is plain Python on the validate/params/compile path (importing networkx alone costs
about 0.35 s, more than the whole ``params`` budget); :meth:`ModelGraph.to_networkx` hands the
same graph to networkx for ``cartspec graph``, the tests and any analysis a user writes.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cartspec.errors import Problem, SpecError
from cartspec.loader import Loaded, Path_
from cartspec.schema import MHA, MLA, Anchor, Core, Cross, ModelConfig, Spec, Stack
from cartspec.validate import file_order

if TYPE_CHECKING:
    import networkx as nx

MAX_STORED_PARAMS = 50_000_000_000  # 200 GB of float32 weights: beyond it a size is a typo
MAX_TOKENS_PER_STEP = 1 << 24  # micro_batch * seq_len


@dataclass
class Group:
    """A sharing group: one set of parameters, held by ``owner`` and read by ``members``."""

    name: str
    owner: str  # module path in the generated model
    block: str  # the report row its parameters count under
    kind: str  # embedding | layer | core | anchor | gate | state_mix | loop_embedding | norm | head
    parts: dict[str, int]  # parameter breakdown, e.g. {"attn": ..., "ffn": ..., "norms": ...}
    signature: tuple  # structural identity: members of one group must agree on it
    loop_control: bool = False  # gate, state mix, loop embedding: the paper counts them once
    members: list[str] = field(default_factory=list)

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
    spec: Spec
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

        g = nx.DiGraph(name=self.spec.name)
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


# ----------------------------------------------------------------------------- parameter sizes


def attention_parts(m: ModelConfig, a: MHA | MLA | Cross) -> int:
    """Parameters of one attention module (no biases anywhere)."""
    d = m.d_model
    if isinstance(a, Cross):
        return 2 * d * d  # q_proj, o_proj; K and V come from the anchor
    if isinstance(a, MLA):
        return 2 * d * d + 3 * d * kv_latent(m, a.kv_latent)  # q, o; kv_down, k_up, v_up
    kv = (a.kv_heads or m.n_heads) * m.head_dim
    return 2 * d * d + 2 * d * kv


def kv_latent(m: ModelConfig, latent: int | None) -> int:
    return latent if latent is not None else m.d_model // 4


def _structure(m: ModelConfig, section: Any) -> dict[str, Any]:
    """A section's settings with its size defaults resolved: sharing groups compare these, so
    ``kv_heads: null`` and the query-head count it stands for are the same structure."""
    settings = section.model_dump()
    if "kv_heads" in settings and settings["kv_heads"] is None:
        settings["kv_heads"] = m.n_heads
    if "kv_latent" in settings:
        settings["kv_latent"] = kv_latent(m, settings["kv_latent"])
    return settings


def ffn_params(m: ModelConfig) -> int:
    matrices = 3 if m.ffn.kind == "swiglu" else 2
    return matrices * m.d_model * m.ffn_hidden


def norm_params(m: ModelConfig) -> int:
    return m.d_model * (2 if m.norm.kind == "layernorm" else 1)


def anchor_params(m: ModelConfig, a: Anchor) -> int:
    if a.kind == "mla_kv":
        return 3 * m.d_model * kv_latent(m, a.kv_latent)
    return 2 * m.d_model * (a.kv_heads or m.n_heads) * m.head_dim


def layer_parts(m: ModelConfig, attention: MHA | MLA | Cross) -> dict[str, int]:
    return {
        "attn": attention_parts(m, attention),
        "ffn": ffn_params(m),
        "norms": 2 * norm_params(m),
    }


# ----------------------------------------------------------------------------- building


LAYER_BLOCKS = ("stack", "prelude", "coda")


def build_graph(spec: Spec, loaded: Loaded | None = None) -> ModelGraph:
    """Build the graph and run every semantic check; raise one SpecError listing all problems."""
    problems: list[tuple[Path_, str]] = []
    _check_sizes(spec, problems)
    _check_blocks(spec, problems)
    if problems:
        raise _located(problems, loaded)

    m, b = spec.model, spec.blocks
    groups: dict[str, Group] = {}
    uses: list[Use] = []
    edges: list[tuple[str, str]] = []

    def add_group(
        name: str,
        block: str,
        kind: str,
        parts: dict[str, int],
        signature: tuple,
        loop_control: bool = False,
    ) -> None:
        groups[name] = Group(name, name, block, kind, parts, signature, loop_control, [name])

    def use(u: Use, after: str | None) -> str:
        uses.append(u)
        if after is not None:
            edges.append((after, u.name))
        return u.name

    add_group("embedding", "embedding", "embedding", {"table": m.vocab_size * m.d_model}, ("embedding",))
    last = use(Use("embedding", "embedding", "embedding", "embedding"), None)
    outputs = {"embedding": last}  # block -> its output node, for the anchor's input edge

    def run_stack(block: str, stack: Stack, prev: str) -> str:
        for i in range(stack.layers):
            name = f"{block}.{i}"
            add_group(
                name,
                block,
                "layer",
                layer_parts(m, stack.attention),
                ("layer", _structure(m, stack.attention)),
            )
            prev = use(Use(name, block, name, name, attention=1), prev)
        return prev

    for block in ("stack", "prelude"):
        stack = getattr(b, block)
        if stack is not None:
            last = outputs[block] = run_stack(block, stack, last)

    if b.anchor is not None:
        add_group(
            "anchor",
            "anchor",
            "anchor",
            {"kv": anchor_params(m, b.anchor)},
            ("anchor", _structure(m, b.anchor)),
        )
        if b.anchor.recompute == "never":
            use(Use("anchor", "anchor", "anchor", "anchor"), outputs[b.anchor.from_])

    if b.core is not None:
        last = _run_core(spec, b.core, last, add_group, use, edges)

    if b.coda is not None:
        last = run_stack("coda", b.coda, last)

    add_group("norm", "norm", "norm", {"weight": norm_params(m)}, ("norm",))
    last = use(Use("norm", "norm", "norm", "norm"), last)
    if m.tie_embeddings:
        use(Use("head", "head", "embedding", "embedding", call=False), last)
    else:
        add_group("head", "head", "head", {"weight": m.vocab_size * m.d_model}, ("head",))
        use(Use("head", "head", "head", "head"), last)

    graph = ModelGraph(spec, groups, uses, edges)
    _apply_share_groups(graph, problems)
    if problems:
        raise _located(problems, loaded)
    return graph


def _run_core(spec: Spec, core: Core, prev: str, add_group, use, edges) -> str:
    m, anchor = spec.model, spec.blocks.anchor
    parts = {k: v * core.layers for k, v in layer_parts(m, core.attention).items()}
    signature = ("core", core.layers, _structure(m, core.attention))
    if core.shared:
        add_group("core", "core", "core", parts, signature)
    else:
        for r in range(core.loops):
            add_group(f"core.{r}", "core", "core", dict(parts), signature)
    if core.gate is not None and core.gate.kind == "lti":
        add_group("gate", "gate", "gate", {"a": m.d_model}, ("gate",), loop_control=True)
    if core.state_mix is not None:
        add_group(
            "state_mix",
            "state_mix",
            "state_mix",
            {"weights": core.state_mix.taps},
            ("state_mix",),
            loop_control=True,
        )
    if core.loop_embedding is not None:
        le = core.loop_embedding
        add_group(
            "loop_embedding",
            "loop_embedding",
            "loop_embedding",
            {"proj": le.dim * m.d_model},
            ("loop_embedding",),
            loop_control=True,
        )

    state = prev
    for r in range(core.loops):
        loop = f"core.loop[{r}]"
        step = prev = state
        if core.state_mix is not None:
            step = use(Use(f"{loop}.state_mix", "state_mix", "state_mix", "state_mix", loop=r), step)
        if core.loop_embedding is not None:
            step = use(
                Use(
                    f"{loop}.loop_embedding",
                    "loop_embedding",
                    "loop_embedding",
                    "loop_embedding",
                    loop=r,
                ),
                step,
            )
        if anchor is not None and anchor.recompute == "every_loop":
            use(Use(f"{loop}.anchor", "anchor", "anchor", "anchor", loop=r), step)
            edges.append((f"{loop}.anchor", loop))
        module = "core" if core.shared else f"core.{r}"
        step = use(Use(loop, "core", module, module, attention=core.layers, loop=r), step)
        if isinstance(core.attention, Cross) and anchor is not None and anchor.recompute == "never":
            edges.append(("anchor", loop))
        if core.gate is not None and core.gate.kind == "lti":
            step = use(Use(f"{loop}.gate", "gate", "gate", "gate", loop=r), step)
        state = step
    return state


def _apply_share_groups(graph: ModelGraph, problems: list[tuple[Path_, str]]) -> None:
    """Merge the spec's explicit ``share:`` groups into the graph: members read one owner."""
    layer_modules = [g.owner for g in graph.groups.values() if g.kind in ("layer", "core")]
    claimed: dict[str, str] = {}
    for gi, share in enumerate(graph.spec.share):
        at: Path_ = ("share", gi)
        if share.name in graph.groups or share.name in claimed.values():
            problems.append(((*at, "name"), f"'{share.name}' is already the name of a module or group"))
            continue
        modules: list[str] = []
        reported = len(problems)
        for mi, member in enumerate(share.members):
            found = _resolve_member(member, layer_modules)
            if not found:
                known = ", ".join(layer_modules[:8]) + (" ..." if len(layer_modules) > 8 else "")
                problems.append(
                    ((*at, "members", mi), f"{member!r} names no shareable module (have: {known})")
                )
            for module in found:
                if module in claimed:
                    problems.append(
                        (
                            (*at, "members", mi),
                            f"'{module}' is already in sharing group '{claimed[module]}'",
                        )
                    )
                elif module not in modules:
                    modules.append(module)
        if len(modules) < 2:
            if len(problems) == reported:  # not when a member was already reported as unknown
                problems.append(((*at, "members"), "a sharing group needs at least two distinct modules"))
            continue
        first = graph.groups[modules[0]]
        bad = [mod for mod in modules[1:] if graph.groups[mod].signature != first.signature]
        if bad:
            problems.append(
                (
                    (*at, "members"),
                    f"members are not structurally identical: '{bad[0]}' differs from '{modules[0]}'",
                )
            )
            continue
        for module in modules:
            claimed[module] = share.name
        merged = Group(
            share.name,
            first.owner,
            first.block,
            first.kind,
            dict(first.parts),
            first.signature,
            first.loop_control,
            modules,
        )
        for module in modules:
            del graph.groups[module]
        graph.groups[share.name] = merged
        graph.uses[:] = [
            Use(u.name, u.block, u.module, share.name, u.call, u.attention, u.loop)
            if u.module in modules
            else u
            for u in graph.uses
        ]


def _resolve_member(member: str, modules: list[str]) -> list[str]:
    """``prelude.3`` → itself; ``prelude.*`` → every prelude layer; ``core.loop[2]`` → ``core.2``."""
    if member.startswith("core.loop[") and member.endswith("]"):
        member = "core." + member[len("core.loop[") : -1]
    if "*" in member:
        return [m for m in modules if fnmatch.fnmatchcase(m, member)]
    return [member] if member in modules else []


# ----------------------------------------------------------------------------- checks


def _check_sizes(spec: Spec, problems: list[tuple[Path_, str]]) -> None:
    m = spec.model
    if m.d_model % m.head_dim:
        problems.append(
            (
                ("model", "d_model"),
                f"{m.d_model} is not divisible by head_dim {m.head_dim}",
            )
        )
    if spec.train.seq_len is not None and spec.train.seq_len > m.max_seq_len:
        problems.append(
            (
                ("train", "seq_len"),
                f"{spec.train.seq_len} exceeds model.max_seq_len {m.max_seq_len}",
            )
        )
    if spec.train.micro_batch * spec.seq_len > MAX_TOKENS_PER_STEP:
        problems.append(
            (
                ("train", "micro_batch"),
                f"micro_batch x seq_len = {spec.train.micro_batch * spec.seq_len:,} tokens; at most {MAX_TOKENS_PER_STEP:,}",
            )
        )
    if spec.train.schedule.min_lr > spec.train.optimizer.lr:
        problems.append(
            (
                ("train", "schedule", "min_lr"),
                f"{spec.train.schedule.min_lr} is above the peak lr {spec.train.optimizer.lr}",
            )
        )
    roped = [
        (block, node.attention.rope_base)
        for block in ("stack", "prelude", "core", "coda")
        if (node := getattr(spec.blocks, block)) is not None and getattr(node.attention, "rope", False)
    ]
    if len({base for _, base in roped}) > 1:
        block, base = roped[-1]
        problems.append(
            (
                ("blocks", block, "attention", "rope_base"),
                f"{base} differs from {roped[0][1]}; RoPE blocks share one table",
            )
        )
    n_heads = max(m.n_heads, 1)
    for block in ("stack", "prelude", "core", "coda"):
        node = getattr(spec.blocks, block)
        attention = node.attention if node is not None else None
        kv_heads = getattr(attention, "kv_heads", None)
        if kv_heads is not None and (kv_heads > n_heads or n_heads % kv_heads):
            problems.append(
                (
                    ("blocks", block, "attention", "kv_heads"),
                    f"{kv_heads} does not divide the {n_heads} query heads",
                )
            )
    anchor = spec.blocks.anchor
    if anchor is not None:
        if (
            anchor.kind == "kv"
            and anchor.kv_heads is not None
            and (anchor.kv_heads > n_heads or n_heads % anchor.kv_heads)
        ):
            problems.append(
                (
                    ("blocks", "anchor", "kv_heads"),
                    f"{anchor.kv_heads} does not divide the {n_heads} query heads",
                )
            )
        if anchor.kind == "kv" and anchor.kv_latent is not None:
            problems.append(
                (
                    ("blocks", "anchor", "kv_latent"),
                    "only kind mla_kv has a latent; kind kv is full rank",
                )
            )
        if anchor.kind == "mla_kv" and anchor.kv_heads is not None:
            problems.append(
                (
                    ("blocks", "anchor", "kv_heads"),
                    "kind mla_kv up-projects to every head; kv_heads is for kind kv",
                )
            )
    if problems:
        return
    stored = _rough_stored(spec)
    if stored > MAX_STORED_PARAMS:
        problems.append(
            (
                ("model", "d_model"),
                f"the model would store {stored:,} parameters; at most {MAX_STORED_PARAMS:,} (a typo?)",
            )
        )


def _rough_stored(spec: Spec) -> int:
    """Stored parameters before sharing, for the size guard (exact counts come from the graph)."""
    m, b = spec.model, spec.blocks
    total = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    for block in ("stack", "prelude", "coda"):
        stack = getattr(b, block)
        if stack is not None:
            total += stack.layers * sum(layer_parts(m, stack.attention).values())
    if b.core is not None:
        copies = 1 if b.core.shared else b.core.loops
        total += copies * b.core.layers * sum(layer_parts(m, b.core.attention).values())
    return total


def _check_blocks(spec: Spec, problems: list[tuple[Path_, str]]) -> None:
    b = spec.blocks
    looped = [n for n in ("prelude", "anchor", "core", "coda") if getattr(b, n) is not None]
    if b.stack is not None and looped:
        problems.append(
            (
                ("blocks", looped[0]),
                "a dense 'stack' is a model on its own; use prelude/core/coda for a looped model",
            )
        )
        return
    if b.stack is None and not any(getattr(b, n) is not None for n in ("prelude", "core", "coda")):
        problems.append((("blocks",), "no layers: give a dense 'stack', or prelude/core/coda"))
        return
    core, anchor = b.core, b.anchor
    if anchor is not None:
        source = anchor.from_
        if source not in ("embedding", "prelude"):
            order = ("coda", "core", "anchor")
            why = "runs after the core that reads the anchor" if source in order else "is not a block"
            problems.append(
                (
                    ("blocks", "anchor", "from"),
                    f"'{source}' {why}; an anchor reads 'prelude' or 'embedding'",
                )
            )
        elif source == "prelude" and b.prelude is None:
            problems.append((("blocks", "anchor", "from"), "reads 'prelude', but the spec has no prelude"))
        if core is None or not isinstance(core.attention, Cross):
            problems.append(
                (
                    ("blocks", "anchor"),
                    "no block cross-attends to this anchor (core.attention.kind: cross); remove it or use it",
                )
            )
    if core is None:
        return
    if isinstance(core.attention, Cross) and (anchor is None or core.attention.to != "anchor"):
        problems.append(
            (
                ("blocks", "core", "attention", "to"),
                f"cross attention to '{core.attention.to}', but the spec defines no such anchor (blocks.anchor)",
            )
        )
    le = core.loop_embedding
    if le is not None and le.max_loops < core.loops:
        problems.append(
            (
                ("blocks", "core", "loop_embedding", "max_loops"),
                f"{le.max_loops} rows cannot index {core.loops} loops",
            )
        )


def _located(problems: list[tuple[Path_, str]], loaded: Loaded | None) -> SpecError:
    def where(path: Path_) -> str:
        return loaded.locate(path) if loaded is not None else "<spec>"

    found = [Problem(where(p), ".".join(str(x) for x in p), msg) for p, msg in problems]
    return SpecError(sorted(found, key=file_order))
