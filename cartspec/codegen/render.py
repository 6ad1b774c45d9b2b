"""Render a resolved architecture into one standalone PyTorch module (jinja2; no torch here).

The compiler resolves every choice (which classes, which sizes, which loop body), so the
generated code only does them: no string dispatch at run time, no branch for an unused feature.
Each component kind names its own template and class (:mod:`cartspec.components`); this module
decides which appear and in what order. Only validated identifiers and numbers reach the
source; the spec's free text never does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import jinja2

from cartspec import __version__
from cartspec.architecture import Architecture, Stage
from cartspec.codegen.config import config_checks, config_entries
from cartspec.codegen.forward import forward_context
from cartspec.codegen.layout import module_list, wrap
from cartspec.components.attention import Attention
from cartspec.graph import ModelGraph
from cartspec.loader import display
from cartspec.resolve import Resolved


@dataclass(frozen=True)
class AttentionClass:
    name: str
    template: str
    rope: bool
    causal: bool
    grouped: bool = False  # GQA/MQA: K, V heads repeated to the query heads
    fused: bool = False  # one qkv matrix
    qk_bias: bool = False  # a learned bias on Q and K before RoPE
    qk_norm: bool = False  # q and k RMS-normalised (no weight) after RoPE
    values: bool = False  # some layer using it adds a gated value embedding to V


@dataclass(frozen=True)
class LayerClass:
    name: str
    doc: str
    attn_cls: str
    size_arg: str
    rope: bool
    sandwich: bool  # norm(x + f(norm(x))): four norms
    values: bool = False  # some layer built from it has a value embedding


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


def _uses_math(template: str) -> bool:
    """Whether a template's code calls the math module (the generated file imports it only then)."""
    env = _environment()
    return "math." in env.loader.get_source(env, template)[0]


def class_name(name: str) -> str:
    """cart_d1024 -> CartD1024."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def render(resolved: Resolved, source: str | None = None) -> str:
    """The generated module's source text for a resolved spec."""
    context = _context(resolved.arch, resolved.graph, resolved.sha256)
    source = source or display(resolved.path.absolute())
    return _environment().get_template("model.py.j2").render(**context, source=source)


def _context(arch: Architecture, graph: ModelGraph, sha256: str) -> dict:
    m = arch.model
    attention_classes: dict[str, AttentionClass] = {}
    valued = _valued_attention_classes(arch)
    for a in arch.attentions:
        cls = _attention_class(a, arch)
        attention_classes.setdefault(cls.name, replace(cls, values=cls.name in valued))
    layers = _layer_classes(arch)
    core = _core_context(arch) if arch.core else None
    entries = config_entries(arch)
    loop_templates = [t for p in arch.loop_parts() for t in p.templates()]
    if arch.core is not None and arch.core.init_state.template:
        loop_templates.append(arch.core.init_state.template)
    loop_templates = [t for t in dict.fromkeys(loop_templates) if t != m.norm.template]  # each class once
    ctx = {
        "version": __version__,
        "sha256": sha256,
        "name": arch.name,
        "class_name": _model_class_name(arch.name, attention_classes, layers),
        "summary": _summary(arch),
        "config_fields": [e for e in entries if not e.derived],
        "config_properties": [e for e in entries if e.derived],
        "config_checks": config_checks(arch, entries),
        "norm_template": m.norm.template,
        "norm_ctor": m.norm.constructor,
        "norm_for": m.norm.constructor_for,
        "norm_line": _final_norm(graph, m.norm.constructor),
        "ffn_template": m.ffn.template,
        "ffn_cls": m.ffn.class_name,
        "rope": arch.rope_base is not None,
        "rope_width": "rope_dim" if any(e.name == "rope_dim" for e in entries) else "head_dim",
        "rope_style": arch.rope_style,
        "attention_classes": list(attention_classes.values()),
        "layer_classes": list({lc.name: lc for lc, _ in layers.values()}.values()),
        "anchor": arch.anchor,
        "anchor_grouped": arch.anchor is not None and arch.anchor.grouped(m),
        "core": core,
        "loop_templates": loop_templates,
        "values_template": next((v.template for _, v, _ in arch.value_stages()), ""),
        "tied": m.tie_embeddings,
        "needs_math": any("math." in e.rule for e in entries) or any(map(_uses_math, loop_templates)),
        "init_lines": _init_lines(arch, graph, layers),
        "blocks_lines": wrap(8, "return [", _block_items(arch, graph), "]"),
        "head_expr": "F.linear(self.norm(x), self.embedding.weight)  # tied head: the embedding table"
        if m.tie_embeddings
        else "self.head(self.norm(x))",
    }
    ctx.update(forward_context(arch, core))
    return ctx


# Names every generated module may define at top level (besides the spec-dependent attention and
# layer classes): the model class must shadow none of them.
BUILDING_BLOCKS = frozenset(
    {
        "Config",
        "F",
        "Linear",
        "RMSNorm",
        "Rotary",
        "SwiGLU",
        "FusedSwiGLU",
        "MLP",
        "ReLU2MLP",
        "AnchorKV",
        "LTIGate",
    }
    | {"StateMix", "LoopEmbedding", "CoreBlock", "CoreLayer", "SandwichLayer", "ConcatInject", "InitialState"}
    | {"ValueEmbeddings", "DiagonalInject"}
)


def _model_class_name(name: str, attention_classes: dict, layers: dict) -> str:
    """class_name(name), suffixed with ``Model`` when it would shadow a building block (a spec
    named ``rotary`` or ``config``)."""
    taken = BUILDING_BLOCKS | set(attention_classes) | {lc.name for lc, _ in layers.values()}
    cls = class_name(name)
    return f"{cls}Model" if cls in taken else cls


def _valued_attention_classes(arch: Architecture) -> set[str]:
    """The attention classes some stage with value embeddings builds its layers from."""
    m = arch.model
    stages = [(s.attention, s.values) for s in arch.stages]
    if arch.core is not None:
        stages.append((arch.core.attention, arch.core.value_embedding))
    return {a.class_name(m) for a, values in stages if values is not None}


def _attention_class(a: Attention, arch: Architecture) -> AttentionClass:
    m = arch.model
    fused, qk_bias = getattr(a, "fused_qkv", False), getattr(a, "qk_bias", False)  # mha's options
    qk_norm = getattr(a, "qk_norm", False)
    return AttentionClass(
        a.class_name(m), a.template, a.rope, a.causal, a.grouped(m), fused, qk_bias, qk_norm
    )


def _layer_classes(arch: Architecture) -> dict[str, tuple[LayerClass, str]]:
    """One layer class per distinct attention and norm placement, for each stage: (class, its size
    argument).

    A single structure is ``Layer`` (``SandwichLayer``); several are named for their attention
    (``LatentSelfAttentionLayer``), so the coda is never built from a class named for another stage.
    """
    by_structure: dict[tuple[str, str], list[Stage]] = {}
    for stage in arch.stages:
        by_structure.setdefault((stage.attention.class_name(arch.model), stage.placement), []).append(stage)
    out: dict[str, tuple[LayerClass, str]] = {}
    for (attn_cls, placement), stages in by_structure.items():
        a = stages[0].attention
        sandwich = placement == "sandwich"
        kind = "Sandwich" if sandwich else ""
        name = f"{kind}Layer" if len(by_structure) == 1 else f"{attn_cls}{kind}Layer"
        doc = f"A transformer layer ({', '.join(s.name for s in stages)})"
        values = any(s.values is not None for s in stages)
        cls = LayerClass(name, doc, attn_cls, a.size_arg, a.rope, sandwich, values)
        for stage in stages:
            out[stage.name] = (cls, f"config.{stage.name}_{a.size_arg}")
    return out


def _core_context(arch: Architecture) -> dict:
    core = arch.core
    a = core.attention
    cls = _attention_class(a, arch)
    contractive = core.gate is not None and core.gate.takes_update
    what = "cross-attends to the anchor's K, V" if a.reads_anchor else "attends to itself"
    values = core.value_embedding is not None
    layer_args = f"config{', rotary' if cls.rope else ''}{', gates[i]' if values else ''}"
    return {
        "cross": a.reads_anchor,
        "rope": cls.rope,
        "attn_cls": cls.name,
        "size_field": "" if a.reads_anchor else f"config.core_{a.size_arg}",
        "layers": core.layers,
        "ffn_cls": core.ffn.class_name if core.ffn is not None else arch.model.ffn.class_name,
        "ffn_template": core.ffn.template if core.ffn is not None else None,
        "layers_lines": module_list(
            8, "layers", f"CoreLayer({layer_args})", "config.core_layers", "i" if values else "_"
        ),
        "value_gates": values,  # (not "values": a dict method to jinja)
        "layer_cls": "CoreBlock" if core.layers == 1 else "CoreLayer",
        "layer_doc": f"The core {'block' if core.layers == 1 else 'layer'}: {what}",
        "contractive": contractive,
        "sandwich": core.norm_placement == "sandwich",
        "shared": core.shared,
        "unfrozen": arch.anchor is not None and arch.anchor.recompute == "every_loop",
    }


def _summary(arch: Architecture) -> str:
    parts = ["embedding"]
    stack, prelude, coda = arch.stage("stack"), arch.stage("prelude"), arch.stage("coda")
    if stack:
        parts.append(f"{stack.layers} layers")
    if prelude:
        parts.append(f"prelude ({prelude.layers})")
    if arch.anchor and arch.anchor.recompute == "never":
        parts.append("anchor K, V")
    if arch.core:
        kind = "shared" if arch.core.shared else "unshared"
        parts.append(f"{kind} core x {arch.core.loops} loops")
        if arch.core.out_norm:
            parts.append("out norm")
    if coda:
        parts.append(f"coda ({coda.layers})")
    parts += ["norm", "tied head" if arch.model.tie_embeddings else "head"]
    return " -> ".join(parts)


def _init_lines(arch: Architecture, graph: ModelGraph, layers: dict) -> list[str]:
    """Module construction in stage order; sharing groups become one object used in several places."""
    m = arch.model
    owner_of = {member: g.owner for g in graph.groups.values() for member in g.members}
    shared_owners = {
        g.owner: g for g in graph.groups.values() if len(g.members) > 1 and g.kind in ("layer", "core")
    }
    lines: list[str] = []
    made: set[str] = set()

    def build(block: str, count: str, ctor: str, n: int, gated: bool = False) -> None:
        """``gated``: layer i takes its value-embedding gate width from the stage's tables."""
        modules = [f"{block}.{i}" for i in range(n)]
        if not any(owner_of[mod] != mod or mod in shared_owners for mod in modules):
            element = f"{ctor[:-1]}, self.{block}_values.gates[i])" if gated else ctor
            lines.extend(module_list(8, block, element, count, "i" if gated else "_"))
            return
        items = []
        for i, mod in enumerate(modules):
            owner = owner_of[mod]
            var = owner.replace(".", "_")
            if owner not in made:
                group = graph.group_of(owner)
                if len(group.members) > 1:
                    lines.append(f"# sharing group '{group.name}': {', '.join(group.members)}")
                lines.append(
                    f"{var} = {ctor[:-1]}, self.{block}_values.gates[{i}])" if gated else f"{var} = {ctor}"
                )
                made.add(owner)
            items.append(var)
        lines.extend(wrap(8, f"self.{block} = nn.ModuleList([", items, "])"))

    def build_values(stage: str, n_layers: str) -> None:
        args = [
            "config",
            f"config.{stage}_value_layers",
            n_layers,
            f"config.{stage}_kv_heads * config.head_dim",
            f"config.{stage}_value_gate_channels",
        ]
        lines.extend(wrap(8, f"self.{stage}_values = ValueEmbeddings(", args, ")"))

    def build_stage(stage: Stage) -> None:
        cls, size = layers[stage.name]
        rotary = ", self.rotary" if cls.rope else ""
        ctor = f"{cls.name}(config, {size}{rotary})"
        if stage.values is not None:
            build_values(stage.name, f"config.{stage.name}_layers")
        build(stage.name, f"config.{stage.name}_layers", ctor, stage.layers, stage.values is not None)
        if stage.output_norm:
            lines.append(f"self.{stage.name}_norm = {m.norm.constructor}  # on the {stage.name}'s output")

    for stage in arch.stages:
        if stage.name != "coda":
            build_stage(stage)
    if arch.anchor:
        note = (
            "K, V computed once per forward"
            if arch.anchor.recompute == "never"
            else "K, V from every loop's input"
        )
        lines.append(f"self.anchor = AnchorKV(config)  # {note}")
    core = arch.core
    if core:
        if core.init_state.attribute:
            lines.append(f"self.{core.init_state.attribute} = {core.init_state.constructor()}")
        gate = ""
        if core.value_embedding is not None:
            build_values("core", "1" if core.layers == 1 else "config.core_layers")
            gate = ", self.core_values.gates" + ("[0]" if core.layers == 1 else "")
        ctor = f"CoreBlock(config{', self.rotary' if core.attention.rope else ''}{gate})"
        if core.shared:
            lines.append(f"self.core = {ctor}  # one block, run by every loop")
        else:
            build("core", "config.loops", ctor, core.loops)
        parts = [p for p in arch.loop_parts() if p.attribute]
        for part in [p for p in parts if not p.on_output] + [p for p in parts if p.on_output]:
            lines.append(f"self.{part.attribute} = {part.constructor()}")
        if core.out_norm:
            lines.append(f"self.core_out_norm = {arch.model.norm.constructor}  # on the loop's last state")
        if core.readout is not None:
            lines.append(f"self.readout = {core.readout.constructor()}  # after the last loop")
    coda = arch.stage("coda")
    if coda:
        build_stage(coda)
    return lines


def _final_norm(graph: ModelGraph, ctor: str) -> str:
    """The final norm's construction: its own module, or the loop's out norm when a sharing group
    makes them one (Huginn's ln_f, used after the loop and before the head)."""
    group = graph.group_of("norm")
    if len(group.members) > 1:
        return f"self.core_out_norm  # sharing group '{group.name}': {', '.join(group.members)}"
    return ctor


def _block_items(arch: Architecture, graph: ModelGraph) -> list[str]:
    """The entries of ``Model.blocks()``: the stack, prelude, core and coda blocks in stage order, a
    module that a sharing group places several times listed once, where it first appears."""
    owner_of = {member: g.owner for g in graph.groups.values() for member in g.members}
    counts = {s.name: s.layers for s in arch.stages}
    if arch.core is not None:
        counts["core"] = 0 if arch.core.shared else arch.core.loops
    seen: set[str] = set()
    items: list[str] = []
    for block in ("stack", "prelude", "core", "coda"):
        if block not in counts:
            continue
        if counts[block] == 0:  # the shared core: one module
            items.append("self.core")
            continue
        count = counts[block]
        first = []  # indices where a module appears for the first time
        for i in range(count):
            if owner_of[f"{block}.{i}"] not in seen:
                seen.add(owner_of[f"{block}.{i}"])
                first.append(i)
        items += [f"*self.{block}"] if len(first) == count else [f"self.{block}[{i}]" for i in first]
    return items
