"""The generated ``Config``: the spec's sizes as fields, the sizes it left to a rule as properties.

A derived size (heads = d_model / head_dim, the default FFN width, a default latent width) is
computed from the fields, so ``Config(d_model=256)`` builds a consistent model; ``__post_init__``
refuses sizes that cannot build one.
"""

from __future__ import annotations

from cartspec.architecture import Architecture
from cartspec.codegen.layout import wrap
from cartspec.components.base import ConfigEntry


def config_entries(arch: Architecture) -> list[ConfigEntry]:
    """Every size of the generated Config, in stage order, as the spec wrote it."""
    m, spec = arch.model, arch.spec
    b = spec.blocks
    entries = [
        ConfigEntry(name="vocab_size", type="int", value=str(m.vocab_size)),
        ConfigEntry(name="d_model", type="int", value=str(m.d_model)),
        ConfigEntry(name="max_seq_len", type="int", value=str(m.max_seq_len)),
        ConfigEntry(name="head_dim", type="int", value=str(m.head_dim)),
        ConfigEntry(
            name="n_heads", type="int", rule="self.d_model // self.head_dim", comment="d_model / head_dim"
        ),
        *m.ffn.config_entries(m.d_model),
        ConfigEntry(name="norm_eps", type="float", value=repr(m.norm.eps)),
        ConfigEntry(name="init_std", type="float", value=repr(m.init_std)),
    ]
    if m.embedding_scale == "sqrt_d":
        entries.append(
            ConfigEntry(
                name="embedding_scale", type="float", rule="math.sqrt(self.d_model)", comment="sqrt(d_model)"
            )
        )
    elif m.scales_embedding:
        entries.append(
            ConfigEntry(name="embedding_scale", type="float", value=repr(float(m.embedding_scale)))
        )
    if arch.rope_base is not None:
        entries.append(ConfigEntry(name="rope_base", type="float", value=repr(arch.rope_base)))
        block, roped = next((name, a) for name, a in arch.named_attentions if a.rope)
        width = roped.rope_width_rule(block)
        if width != "self.head_dim":
            entries.append(
                ConfigEntry(name="rope_dim", type="int", rule=width, comment="the width RoPE rotates")
            )
    for name in ("stack", "prelude"):
        stack = getattr(b, name)
        if stack is not None:
            entries.append(ConfigEntry(name=f"{name}_layers", type="int", value=str(stack.layers)))
            entries += stack.attention.config_entries(name, m)
            entries += stack.value_embedding.config_entries(name) if stack.value_embedding else []
    if b.anchor:
        entries += b.anchor.config_entries(m)
    if b.core:
        c = b.core
        entries.append(ConfigEntry(name="loops", type="int", value=str(c.loops), comment="R"))
        if c.layers > 1:
            entries.append(ConfigEntry(name="core_layers", type="int", value=str(c.layers)))
        entries += c.attention.config_entries("core", m)
        entries += c.ffn.config_entries() if c.ffn is not None else []
        entries += c.value_embedding.config_entries("core") if c.value_embedding else []
        for part in arch.loop_parts():
            entries += part.config_entries()
        entries += c.init_state.config_entries()
        entries.append(ConfigEntry(name="checkpoint_loops", type="bool", value=str(c.checkpoint)))
    if b.coda:
        entries.append(ConfigEntry(name="coda_layers", type="int", value=str(b.coda.layers)))
        entries += b.coda.attention.config_entries("coda", m)
        entries += b.coda.value_embedding.config_entries("coda") if b.coda.value_embedding else []
    return entries


def config_checks(arch: Architecture, entries: list[ConfigEntry]) -> list[str]:
    """``__post_init__``'s body: the size rules a changed Config could break."""
    lines = _refuse(
        "self.d_model % self.head_dim", "d_model {self.d_model} is not divisible by head_dim {self.head_dim}"
    )
    for e in entries:
        if e.name.endswith("_kv_heads") and not e.derived:
            why = f"{e.name} {{self.{e.name}}} does not divide the {{self.n_heads}} query heads"
            lines += _refuse(f"self.n_heads % self.{e.name}", why)
    core = arch.core
    if core is not None and core.shared and core.loop_embedding is not None and core.loop_embedding.rows:
        why = "loops {self.loops} exceeds the {self.max_loops} rows of the loop table"
        lines += _refuse("self.loops > self.max_loops", why)
    return lines


def _refuse(condition: str, message: str) -> list[str]:
    """``if condition: raise ValueError(f"message")``, laid out as ruff would inside __post_init__."""
    return [
        f"if {condition}:",
        *("    " + line for line in wrap(12, "raise ValueError(", [f'f"{message}"'], ")")),
    ]
