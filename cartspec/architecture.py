"""The resolved architecture: the spec with every size concrete, in stage order.

Defaults that the spec leaves to a rule (K/V heads = query heads, latent width = d_model / 4,
the FFN hidden width, the one RoPE base) are made concrete here and nowhere else; the graph,
the accounting, the code generator and the sharing checks all read this.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from cartspec.components.anchor import Anchor
from cartspec.components.attention import Attention
from cartspec.components.ffn import FFN
from cartspec.components.loop import LoopPart
from cartspec.components.moe import MoE
from cartspec.components.norm import NORMS_PER_LAYER
from cartspec.components.values import GatedValueEmbedding
from cartspec.schema import Core, ModelConfig, ShareGroup, Spec

LAYER_STAGES = ("stack", "prelude", "coda")  # runs of identical layers, in the order they may run


@dataclass(frozen=True)
class Stage:
    """A run of identical layers (stack, prelude or coda), its attention and norm placement resolved."""

    name: str
    layers: int
    attention: Attention
    placement: str  # pre | sandwich
    values: GatedValueEmbedding | None = None  # value-embedding tables of some layers
    output_norm: bool = False  # a norm on the stage's output

    def gated(self, i: int) -> bool:
        """Layer i reads a value-embedding table through its gate."""
        return self.values is not None and i in self.values.layers


@dataclass(frozen=True)
class Architecture:
    """Everything the model is, every size concrete. ``spec`` is kept for what the generated
    ``Config`` shows as written (a size given vs a size left to its rule)."""

    spec: Spec
    n_heads: int
    ffn_hidden: int
    rope_base: float | None  # None: no block uses RoPE
    rope_style: str  # half or interleaved (one table serves every RoPE block)
    stages: tuple[Stage, ...]  # stack, or prelude then coda (the core runs between them)
    anchor: Anchor | None
    core: Core | None  # its attention and norm placement resolved

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> ModelConfig:
        return self.spec.model

    @property
    def looped(self) -> bool:
        return self.core is not None

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def attentions(self) -> list[Attention]:
        """Every attention in stage order (core last)."""
        return [a for _, a in self.named_attentions]

    @property
    def named_attentions(self) -> list[tuple[str, Attention]]:
        """(block, attention) in stage order (core last)."""
        return [(s.name, s.attention) for s in self.stages] + (
            [("core", self.core.attention)] if self.core else []
        )

    @property
    def decodable(self) -> bool:
        """Every attention causal: the model decodes token by token with a KV cache."""
        return all(a.causal for a in self.attentions)

    def layer_parts(
        self,
        attention: Attention,
        placement: str,
        values: GatedValueEmbedding | None = None,
        ffn: FFN | MoE | None = None,
    ) -> dict[str, int]:
        """Parameters of one layer: attention, FFN (the model's unless given) and its norms (two
        pre-norm, four sandwich), and the gate of its value embedding when ``values`` is given."""
        m = self.model
        parts = {
            "attn": attention.params(m),
            "ffn": (ffn or m.ffn).params(m.d_model),
            "norms": NORMS_PER_LAYER[placement] * m.norm.params(m.d_model),
        }
        if values is not None:
            parts["value_gate"] = values.gate_params(attention.size(m))
        return parts

    def layer_flops(
        self,
        attention: Attention,
        placement: str,
        values: GatedValueEmbedding | None = None,
        ffn: FFN | MoE | None = None,
    ) -> int:
        """Forward FLOPs per sequence of one layer (a table lookup costs none; its gate does;
        a mixture of experts: its top-k experts only)."""
        m, T = self.model, self.model.max_seq_len
        norms = NORMS_PER_LAYER[placement] * m.norm.flops(m.d_model, T)
        gate = 2 * values.gate_params(attention.size(m)) * T if values is not None else 0
        return attention.flops(m, T) + (ffn or m.ffn).flops(m.d_model, T) + norms + gate

    def layer_inactive(self, ffn: FFN | MoE | None) -> int:
        """Parameters of one layer that a token does not touch: the routed experts it did not choose."""
        return ffn.params(self.model.d_model) - ffn.active(self.model.d_model) if isinstance(ffn, MoE) else 0

    def value_stages(self) -> list[tuple[str, GatedValueEmbedding, int]]:
        """(stage, its value embedding, K/V heads) of every stage with tables, core included."""
        stages = [(s.name, s.values, s.attention) for s in self.stages]
        if self.core is not None:
            stages.append(("core", self.core.value_embedding, self.core.attention))
        return [(name, v, a.size(self.model)) for name, v, a in stages if v is not None]

    def shareable(self) -> dict[str, tuple]:
        """Every module a ``share:`` group may name, with its structure: members of one group
        must agree on it (sizes compared resolved, so ``kv_heads: null`` equals the head count)."""
        out: dict[str, tuple] = {}
        for stage in self.stages:
            for i in range(stage.layers):
                structure = _structure(stage.attention)
                gate = stage.values.gate_channels if stage.gated(i) else None  # its size: channels read
                out[f"{stage.name}.{i}"] = ("layer", structure, stage.placement, gate)
        c = self.core
        if c is not None:
            v = c.value_embedding
            gates = (tuple(v.layers), v.gate_channels) if v else ()
            signature = ("core", c.layers, _structure(c.attention), c.norm_placement, gates)
            for module in ["core"] if c.shared else [f"core.{r}" for r in range(c.loops)]:
                out[module] = signature
            if c.out_norm:
                out["core_out_norm"] = ("norm",)
        out["norm"] = ("norm",)  # the final norm
        return out

    def loop_parts(self) -> list[LoopPart]:
        """The core's gate, state mix, loop embedding, inject, LoRA and halting that the spec has, in
        that order (the loop reads its input through state mix, loop embedding and inject, in their
        order; its output goes through the LoRA, then the gate, then the halting)."""
        c = self.core
        parts = (c.gate, c.state_mix, c.loop_embedding, c.inject, c.lora, c.halt) if c else ()
        return [p for p in parts if p is not None]

    def module_names(self) -> set[str]:
        """Every module with parameters of its own before sharing: the graph's sharing groups."""
        names = {"embedding", "norm", *self.shareable()}
        names |= {"anchor"} if self.anchor else set()
        names |= {f"{stage}_values" for stage, _, _ in self.value_stages()}
        names |= {f"{s.name}_norm" for s in self.stages if s.output_norm}
        names |= {p.attribute for p in self.loop_parts() if p.attribute}
        names |= {"readout"} if self.core is not None and self.core.readout is not None else set()
        names |= set() if self.model.tie_embeddings else {"head"}
        return names


def _structure(attention: Attention) -> dict[str, Any]:
    return attention.model_dump()


def resolve_architecture(spec: Spec) -> Architecture:
    """The spec's architecture with every default size made concrete (the spec passed the checks)."""
    m, b = spec.model, spec.blocks
    stages = tuple(
        Stage(
            name,
            stack.layers,
            stack.attention.resolved(m),
            stack.norm_placement or m.norm.placement,
            stack.value_embedding,
            stack.output_norm,
        )
        for name in LAYER_STAGES
        if (stack := getattr(b, name)) is not None
    )
    core = None
    if b.core is not None:
        placement = b.core.norm_placement or m.norm.placement
        core = b.core.model_copy(
            update={"attention": b.core.attention.resolved(m), "norm_placement": placement}
        )
    roped = [a for a in [s.attention for s in stages] + ([core.attention] if core else []) if a.rope]
    return Architecture(
        spec=spec,
        n_heads=m.n_heads,
        ffn_hidden=m.ffn.hidden_for(m.d_model),
        rope_base=float(roped[0].rope_base) if roped else None,
        rope_style=roped[0].rope_style if roped else "half",
        stages=stages,
        anchor=b.anchor.resolved(m) if b.anchor else None,
        core=core,
    )


def share_members(share: ShareGroup, modules: list[str]) -> list[list[str]]:
    """For each member pattern of a ``share:`` group, the modules it names: ``prelude.3`` itself,
    ``prelude.*`` every prelude layer, ``core.loop[2]`` the unshared core's ``core.2``."""
    return [_match(member, modules) for member in share.members]


def _match(member: str, modules: list[str]) -> list[str]:
    if member.startswith("core.loop[") and member.endswith("]"):
        member = "core." + member[len("core.loop[") : -1]
    if "*" in member:
        return [m for m in modules if fnmatch.fnmatchcase(m, member)]
    return [member] if member in modules else []
