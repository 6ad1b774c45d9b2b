"""Render a resolved spec into one standalone PyTorch module (jinja2; no torch imported here).

The compiler resolves every choice (which classes, which sizes, which loop body), so the
generated code only does them: no string dispatch at run time, no branch for an unused feature.
Only validated identifiers and numbers reach the source; the spec's free text never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import jinja2

from cartspec import __version__
from cartspec.graph import LAYER_BLOCKS, ModelGraph, kv_latent
from cartspec.loader import display
from cartspec.resolve import Resolved, architecture_sha256
from cartspec.schema import MHA, MLA, Core, Cross, ModelConfig, Spec, Stack


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    value: str
    comment: str = ""


@dataclass(frozen=True)
class AttentionClass:
    name: str
    template: str
    rope: bool
    causal: bool
    grouped: bool = False  # GQA/MQA: K, V heads repeated to the query heads


@dataclass(frozen=True)
class LayerClass:
    name: str
    doc: str
    attn_cls: str
    size_arg: str
    rope: bool


LINE_LENGTH = 110  # pyproject's ruff line-length: generated code is ruff-format clean by construction


def wrap(indent: int, head: str, items: list[str], tail: str, sep: str = ", ") -> list[str]:
    """Lay out ``head item, item tail`` as ruff format would: one line, hugged, or exploded."""
    one = head + sep.join(items) + tail
    if indent + len(one) <= LINE_LENGTH:
        return [one]
    hugged = "    " + sep.join(items)
    if indent + len(hugged) <= LINE_LENGTH:
        return [head, hugged, tail]
    return [head, *(f"    {item}," for item in items), tail]


def module_list(indent: int, attr: str, element: str, count: str) -> list[str]:
    """``self.<attr> = nn.ModuleList([element for _ in range(count)])``, laid out as ruff would."""
    comprehension = f"[{element} for _ in range({count})]"
    lines = wrap(indent, f"self.{attr} = nn.ModuleList(", [comprehension], ")")
    if len(lines) == 3 and indent + len(lines[1]) > LINE_LENGTH:
        lines = [lines[0], "    [", f"        {element}", f"        for _ in range({count})", "    ]", ")"]
    return lines


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cartspec.codegen", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def class_name(name: str) -> str:
    """cart_d1024 -> CartD1024."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def render(resolved: Resolved, source: str | None = None) -> str:
    """The generated module's source text for a resolved spec."""
    spec, graph = resolved.spec, resolved.graph
    return (
        _environment()
        .get_template("model.py.j2")
        .render(**_context(spec, graph), source=source or display(resolved.path.absolute()))
    )


def _context(spec: Spec, graph: ModelGraph) -> dict:
    m, b = spec.model, spec.blocks
    stacks = [(name, getattr(b, name)) for name in LAYER_BLOCKS if getattr(b, name) is not None]
    attentions = [s.attention for _, s in stacks] + ([b.core.attention] if b.core else [])
    rope_bases = {a.rope_base for a in attentions if not isinstance(a, Cross) and a.rope}

    attention_classes: dict[tuple, AttentionClass] = {}
    for a in attentions:
        key = _attention_key(a, m)
        if key not in attention_classes:
            attention_classes[key] = _attention_class(a, m)
    layers = _layer_classes(stacks, attention_classes, m)

    core = _core_context(spec, b.core, attention_classes) if b.core else None
    ctx = {
        "version": __version__,
        "sha256": architecture_sha256(spec),
        "name": spec.name,
        "class_name": _model_class_name(spec.name, attention_classes, layers),
        "summary": _summary(spec),
        "config_fields": _config_fields(spec, stacks, rope_bases),
        "norm_kind": m.norm.kind,
        "norm_ctor": "RMSNorm(config.d_model, config.norm_eps)"
        if m.norm.kind == "rmsnorm"
        else "nn.LayerNorm(config.d_model, eps=config.norm_eps)",
        "ffn_kind": m.ffn.kind,
        "ffn_cls": "SwiGLU" if m.ffn.kind == "swiglu" else "MLP",
        "rope": bool(rope_bases),
        "attention_classes": list(attention_classes.values()),
        "layer_classes": list({lc.name: lc for lc, _ in layers.values()}.values()),
        "anchor": b.anchor,
        "anchor_grouped": b.anchor is not None
        and b.anchor.kind == "kv"
        and (b.anchor.kv_heads or m.n_heads) < m.n_heads,
        "core": core,
        "tied": m.tie_embeddings,
        "needs_math": bool(core and (core["gate_kind"] == "lti" or core["loop_embedding"])),
        "init_lines": _init_lines(spec, graph, stacks, layers, core),
        "blocks_lines": wrap(8, "return [", _block_items(spec, graph), "]"),
        "head_expr": "F.linear(self.norm(x), self.embedding.weight)  # tied head: the embedding table"
        if m.tie_embeddings
        else "self.head(self.norm(x))",
    }
    ctx.update(_forward_context(spec, core))
    return ctx


# Names every generated module may define at top level (besides the spec-dependent attention and
# layer classes): the model class must shadow none of them.
BUILDING_BLOCKS = frozenset(
    {"Config", "F", "RMSNorm", "Rotary", "SwiGLU", "MLP", "AnchorKV", "LTIGate", "StateMix"}
    | {"LoopEmbedding", "CoreBlock", "CoreLayer"}
)


def _model_class_name(name: str, attention_classes: dict, layers: dict) -> str:
    """class_name(name), suffixed with ``Model`` when it would shadow a building block (a spec
    named ``rotary`` or ``config``)."""
    taken = (
        BUILDING_BLOCKS
        | {c.name for c in attention_classes.values()}
        | {lc.name for lc, _ in layers.values()}
    )
    cls = class_name(name)
    return f"{cls}Model" if cls in taken else cls


def _grouped(a: MHA | MLA | Cross, m: ModelConfig) -> bool:
    return isinstance(a, MHA) and (a.kv_heads or m.n_heads) < m.n_heads


def _attention_key(a: MHA | MLA | Cross, m: ModelConfig) -> tuple:
    return (a.kind, getattr(a, "rope", False), a.causal, _grouped(a, m))


def _attention_class(a: MHA | MLA | Cross, m: ModelConfig) -> AttentionClass:
    grouped = _grouped(a, m)
    base = {
        "mha": "GroupedQueryAttention" if grouped else "SelfAttention",
        "mla": "LatentSelfAttention",
        "cross": "AnchorCrossAttention",
    }[a.kind]
    rope = bool(getattr(a, "rope", False))
    suffix = ("NoRope" if a.kind != "cross" and not rope else "") + ("" if a.causal else "Bidirectional")
    return AttentionClass(base + suffix, f"{a.kind}.py.j2", rope, a.causal, grouped)


def _size_arg(a: MHA | MLA) -> str:
    return "kv_latent" if isinstance(a, MLA) else "kv_heads"


def _layer_classes(
    stacks: list[tuple[str, Stack]], attention_classes: dict, spec_model: ModelConfig
) -> dict[str, tuple[LayerClass, str]]:
    """One layer class per distinct structure, named after the first block that uses it."""
    names = {"prelude": "PreludeLayer", "coda": "CodaLayer", "stack": "Layer"}
    docs = {"prelude": "A prelude layer", "coda": "A coda layer", "stack": "A transformer layer"}
    by_key: dict[tuple, LayerClass] = {}
    out: dict[str, tuple[LayerClass, str]] = {}
    for block, stack in stacks:
        key = _attention_key(stack.attention, spec_model)
        cls = attention_classes[key]
        if key not in by_key:
            by_key[key] = LayerClass(
                names[block], docs[block], cls.name, _size_arg(stack.attention), cls.rope
            )
        out[block] = (by_key[key], f"config.{block}_{_size_arg(stack.attention)}")
    return out


def _core_context(spec: Spec, core: Core, attention_classes: dict) -> dict:
    a = core.attention
    cross = isinstance(a, Cross)
    cls = attention_classes[_attention_key(a, spec.model)]
    form = core.gate.form if core.gate is not None and core.gate.kind == "lti" else None
    what = "cross-attends to the anchor's K, V" if cross else "attends to itself"
    return {
        "cross": cross,
        "rope": cls.rope,
        "attn_cls": cls.name,
        "size_field": "" if cross else f"config.core_{_size_arg(a)}",
        "layers": core.layers,
        "layers_lines": module_list(
            8, "layers", f"CoreLayer(config{', rotary' if cls.rope else ''})", "config.core_layers"
        ),
        "layer_cls": "CoreBlock" if core.layers == 1 else "CoreLayer",
        "layer_doc": f"The core {'block' if core.layers == 1 else 'layer'}: {what}",
        "contractive": form == "contractive",
        "gate_kind": core.gate.kind if core.gate is not None else None,
        "state_mix": core.state_mix is not None,
        "loop_embedding": core.loop_embedding is not None,
        "shared": core.shared,
        "unfrozen": spec.blocks.anchor is not None and spec.blocks.anchor.recompute == "every_loop",
    }


def _summary(spec: Spec) -> str:
    b = spec.blocks
    parts = ["embedding"]
    if b.stack:
        parts.append(f"{b.stack.layers} layers")
    if b.prelude:
        parts.append(f"prelude ({b.prelude.layers})")
    if b.anchor and b.anchor.recompute == "never":
        parts.append("anchor K, V")
    if b.core:
        kind = "shared" if b.core.shared else "unshared"
        parts.append(f"{kind} core x {b.core.loops} loops")
    if b.coda:
        parts.append(f"coda ({b.coda.layers})")
    parts += ["norm", "tied head" if spec.model.tie_embeddings else "head"]
    return " -> ".join(parts)


def _config_fields(spec: Spec, stacks: list[tuple[str, Stack]], rope_bases: set[float]) -> list[Field]:
    m, b = spec.model, spec.blocks
    ffn_rule = (
        f"explicit {m.ffn.kind} hidden"
        if m.ffn.hidden is not None
        else (
            "gelu: 4 * d_model"
            if m.ffn.kind == "gelu"
            else f"swiglu: ceil(int(8 * d_model / 3) / {m.ffn.multiple_of}) * {m.ffn.multiple_of}"
        )
    )
    fields = [
        Field("vocab_size", "int", str(m.vocab_size)),
        Field("d_model", "int", str(m.d_model)),
        Field("max_seq_len", "int", str(m.max_seq_len)),
        Field("head_dim", "int", str(m.head_dim)),
        Field("n_heads", "int", str(m.n_heads), "d_model / head_dim"),
        Field("ffn_hidden", "int", str(m.ffn_hidden), ffn_rule),
        Field("norm_eps", "float", repr(m.norm.eps)),
        Field("init_std", "float", repr(m.init_std)),
    ]
    if rope_bases:
        fields.append(Field("rope_base", "float", repr(float(next(iter(rope_bases))))))
    for block, stack in stacks:
        if block == "coda":
            continue
        fields += [
            Field(f"{block}_layers", "int", str(stack.layers)),
            *_attention_fields(spec, block, stack.attention),
        ]
    if b.anchor:
        if b.anchor.kind == "mla_kv":
            latent = kv_latent(m, b.anchor.kv_latent)
            fields.append(
                Field(
                    "anchor_kv_latent",
                    "int",
                    str(latent),
                    "d_model / 4" if b.anchor.kv_latent is None else "",
                )
            )
        else:
            fields.append(Field("anchor_kv_heads", "int", str(b.anchor.kv_heads or m.n_heads)))
    if b.core:
        c = b.core
        fields.append(Field("loops", "int", str(c.loops), "R"))
        if c.layers > 1:
            fields.append(Field("core_layers", "int", str(c.layers)))
        if not isinstance(c.attention, Cross):
            fields += _attention_fields(spec, "core", c.attention)
        if c.gate is not None and c.gate.kind == "lti":
            fields.append(Field("gate_init", "float", repr(c.gate.init), "sigmoid(a) at init"))
        if c.state_mix is not None:
            init = ", ".join(repr(float(w)) for w in c.state_mix.init_weights)
            fields.append(Field("state_mix_taps", "int", str(c.state_mix.taps)))
            fields.append(
                Field(
                    "state_mix_init",
                    "tuple[float, ...]",
                    f"({init}{',' if c.state_mix.taps == 1 else ''})",
                    "raw weights; softmax in forward",
                )
            )
        if c.loop_embedding is not None:
            fields.append(Field("loop_embedding_dim", "int", str(c.loop_embedding.dim)))
            fields.append(
                Field("max_loops", "int", str(c.loop_embedding.max_loops), "rows of the loop-embedding table")
            )
        fields.append(Field("checkpoint_loops", "bool", str(c.checkpoint)))
    if b.coda:
        fields += [
            Field("coda_layers", "int", str(b.coda.layers)),
            *_attention_fields(spec, "coda", b.coda.attention),
        ]
    return fields


def _attention_fields(spec: Spec, block: str, a: MHA | MLA) -> list[Field]:
    m = spec.model
    if isinstance(a, MLA):
        return [
            Field(
                f"{block}_kv_latent",
                "int",
                str(kv_latent(m, a.kv_latent)),
                "d_model / 4" if a.kv_latent is None else "",
            )
        ]
    heads = a.kv_heads or m.n_heads
    note = "MHA" if heads == m.n_heads else ("MQA" if heads == 1 else "GQA")
    return [Field(f"{block}_kv_heads", "int", str(heads), note)]


def _init_lines(spec: Spec, graph: ModelGraph, stacks, layers, core: dict | None) -> list[str]:
    """Module construction in stage order; sharing groups become one object used in several places."""
    owner_of = {member: g.owner for g in graph.groups.values() for member in g.members}
    shared_owners = {
        g.owner: g for g in graph.groups.values() if len(g.members) > 1 and g.kind in ("layer", "core")
    }
    lines: list[str] = []
    made: set[str] = set()

    def build(block: str, count: str, ctor: str, n: int) -> None:
        modules = [f"{block}.{i}" for i in range(n)]
        if not any(owner_of[mod] != mod or mod in shared_owners for mod in modules):
            lines.extend(module_list(8, block, ctor, count))
            return
        items = []
        for mod in modules:
            owner = owner_of[mod]
            var = owner.replace(".", "_")
            if owner not in made:
                group = graph.group_of(owner)
                if len(group.members) > 1:
                    lines.append(f"# sharing group '{group.name}': {', '.join(group.members)}")
                lines.append(f"{var} = {ctor}")
                made.add(owner)
            items.append(var)
        lines.extend(wrap(8, f"self.{block} = nn.ModuleList([", items, "])"))

    rotary = ", self.rotary"
    for block, stack in stacks:
        if block == "coda":
            continue
        cls, size = layers[block]
        build(
            block,
            f"config.{block}_layers",
            f"{cls.name}(config, {size}{rotary if cls.rope else ''})",
            stack.layers,
        )
    b = spec.blocks
    if b.anchor:
        note = (
            "K, V computed once per forward"
            if b.anchor.recompute == "never"
            else "K, V from every loop's input"
        )
        lines.append(f"self.anchor = AnchorKV(config)  # {note}")
    if core:
        ctor = f"CoreBlock(config{rotary if core['rope'] else ''})"
        if core["shared"]:
            lines.append(f"self.core = {ctor}  # one block, run by every loop")
        else:
            build("core", "config.loops", ctor, b.core.loops)
        if core["state_mix"]:
            lines.append("self.state_mix = StateMix(config.state_mix_taps, config.state_mix_init)")
        if core["loop_embedding"]:
            lines.append(
                "self.loop_embedding = LoopEmbedding(config.loop_embedding_dim, config.max_loops, config.d_model)"
            )
        if core["gate_kind"] == "lti":
            lines.append("self.gate = LTIGate(config.d_model, config.gate_init)")
    if b.coda:
        cls, size = layers["coda"]
        if cls.name != "CodaLayer":
            lines.append(f"# the coda layer has the {cls.doc[2:].lower()}'s structure")
        build(
            "coda",
            "config.coda_layers",
            f"{cls.name}(config, {size}{rotary if cls.rope else ''})",
            b.coda.layers,
        )
    return lines


def _block_items(spec: Spec, graph: ModelGraph) -> list[str]:
    """The entries of ``Model.blocks()``: the stack, prelude, core and coda blocks in stage order, a
    module that a sharing group places several times listed once, where it first appears."""
    owner_of = {member: g.owner for g in graph.groups.values() for member in g.members}
    seen: set[str] = set()
    items: list[str] = []
    for block in ("stack", "prelude", "core", "coda"):
        section = getattr(spec.blocks, block)
        if section is None:
            continue
        if block == "core" and section.shared:
            items.append("self.core")
            continue
        count = section.loops if block == "core" else section.layers
        first = []  # indices where a module appears for the first time
        for i in range(count):
            if owner_of[f"{block}.{i}"] not in seen:
                seen.add(owner_of[f"{block}.{i}"])
                first.append(i)
        items += [f"*self.{block}"] if len(first) == count else [f"self.{block}[{i}]" for i in first]
    return items


def _forward_context(spec: Spec, core: dict | None) -> dict:
    b = spec.blocks
    if not core:
        lines = [
            line
            for block in LAYER_BLOCKS  # stack, prelude, coda: whichever the spec has, in order
            if getattr(b, block) is not None
            for line in (f"for layer in self.{block}:", "    x = layer(x)")
        ]
        return {
            "loops_check": [
                "if loops is not None:",
                '    raise ValueError("this model has no loops to override")',
            ],
            "forward_lines": lines,
            "stats_doc": "A model without a loop has no gate or blend to report.",
            "stats_lines": ["return {}"],
        }
    c = b.core
    kv_args = ", k, v" if core["cross"] else ""
    kv_params = ", k: torch.Tensor, v: torch.Tensor" if core["cross"] else ""
    block_param = "" if core["shared"] else "core: CoreBlock, "  # the loop's own block
    block = "self.core" if core["shared"] else "core"
    out = f"{block}(h_in{kv_args})"
    step_body = {
        "lti": f"self.gate(h_in, {out})",
        "residual": f"h_in + {out}",
        None: out,
    }[core["gate_kind"]]
    step_doc = {
        "lti": "h = sigmoid(a) * h_in + core(h_in)",
        "residual": "h = h_in + core(h_in), the core keeping its own residual",
        None: "h = core(h_in)",
    }[core["gate_kind"]]
    if core["contractive"]:
        step_doc = "h = sigmoid(a) * h_in + delta, the core's update"

    check: list[str] = []
    if not core["shared"]:
        check = [
            "loops = self.config.loops if loops is None else loops",
            "if loops != self.config.loops:",
            '    raise ValueError(f"an unshared core has exactly {self.config.loops} blocks; got loops={loops}")',
        ]
    elif core["loop_embedding"]:
        check = [
            "loops = self.config.loops if loops is None else loops",
            "if not 1 <= loops <= self.config.max_loops:",
            '    raise ValueError(f"loops must be in 1..{self.config.max_loops} (table rows); got {loops}")',
        ]
    else:
        check = [
            "loops = self.config.loops if loops is None else loops",
            "if loops < 1:",
            '    raise ValueError(f"loops must be at least 1; got {loops}")',
        ]

    lines: list[str] = []
    if b.prelude:
        lines += ["for layer in self.prelude:", "    x = layer(x)"]
    lines.append("e = x  # the context anchor: the final prelude output" if b.prelude else "e = x")
    if b.anchor and b.anchor.recompute == "never":
        source = "e" if b.anchor.from_ == "prelude" or not b.prelude else "embedded"
        if source == "embedded":
            lines.insert(0, "embedded = x")
        lines.append(f"k, v = self.anchor({source})  # K, V computed once and reused by every loop")
    if core["state_mix"]:
        lines.append(f"states = [e] * {c.state_mix.taps}  # the blend's buffer starts as copies of e")
    else:
        lines.append("h = e")
    lines.append(
        "for r in range(loops):" if core["loop_embedding"] or not core["shared"] else "for _ in range(loops):"
    )
    h_prev = "self.state_mix(states)" if core["state_mix"] else "h"
    h_in = f"{h_prev} + self.loop_embedding(r)" if core["loop_embedding"] else h_prev
    lines.append(f"    h_in = {h_in}")
    if core["unfrozen"]:
        lines.append("    k, v = self.anchor(h_in)  # unfrozen: K, V recomputed from each loop's input")
    step_args = ("" if core["shared"] else "self.core[r], ") + "h_in" + kv_args
    lines += [
        "    if self.checkpoint_loops and torch.is_grad_enabled():",
        f"        h = checkpoint(self.loop_step, {step_args}, use_reentrant=False)",
        "    else:",
        f"        h = self.loop_step({step_args})",
    ]
    if core["state_mix"]:
        lines += ["    states = [h, *states[:-1]]  # newest first", "x = states[0]"]
    else:
        lines.append("x = h")
    if b.coda:
        lines += ["for layer in self.coda:", "    x = layer(x)"]

    stats: list[str] = []
    doc_parts: list[str] = []
    if core["gate_kind"] == "lti":
        stats.append('"rho": torch.sigmoid(self.gate.a).max().item()')
        doc_parts.append('rho = max sigmoid(a), the paper\'s "spectral radius"')
    if core["state_mix"]:
        stats.append('"mix": torch.softmax(self.state_mix.weights, dim=0).tolist()')
        doc_parts.append("the blend's softmax weights")
    return {
        "loops_check": check,
        "forward_lines": lines,
        "step_def": wrap(
            4,
            "def loop_step(",
            ["self", *f"{block_param}h_in: torch.Tensor{kv_params}".split(", ")],
            ") -> torch.Tensor:",
        ),
        "step_doc": step_doc,
        "step_body": step_body,
        "stats_doc": (" and ".join(doc_parts) + ".")
        if doc_parts
        else "This loop has no gate or blend to report.",
        "stats_lines": wrap(8, "return {", stats, "}"),
    }
