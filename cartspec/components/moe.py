"""A mixture of experts as the core's FFN (DeepSeekMoE-style, as OpenMythos runs it in its loop).

A router (Linear d -> experts, no bias) gives softmax probabilities over every expert; each token
picks its ``top_k`` experts on the router logits plus ``router_bias`` (a buffer that only shifts
the choice: aux-loss-free load balancing adjusts it outside the gradient), and their
probabilities, renormalised to sum to 1, weight the chosen SwiGLU experts' outputs. ``shared``
SwiGLU experts run on every token and are added unweighted.

Counting: every expert is stored; a token touches the router, its top_k routed experts and the
shared ones (``active``), and only those cost FLOPs.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cartspec.components.base import ConfigEntry, Strict


class MoE(Strict):
    """Routed top-k SwiGLU experts plus always-on shared experts."""

    class_name: ClassVar[str] = "MixtureOfExperts"
    template: ClassVar[str] = "moe.py.j2"

    kind: Literal["moe"]
    experts: int = Field(..., ge=2, le=4096, description="Routed experts.")
    top_k: int = Field(..., ge=1, le=4096, description="Routed experts each token runs (at most experts).")
    hidden: int = Field(..., ge=1, le=1 << 18, description="Hidden width of one routed SwiGLU expert.")
    shared: int = Field(0, ge=0, le=64, description="Shared experts, run on every token.")
    shared_hidden: int | None = Field(
        None,
        ge=1,
        le=1 << 20,
        description="Hidden width of one shared expert; default hidden x top_k (OpenMythos).",
    )

    @property
    def shared_width(self) -> int:
        return self.shared_hidden if self.shared_hidden is not None else self.hidden * self.top_k

    def routed_expert(self, d_model: int) -> int:
        """Parameters of one routed expert (gate, up, down)."""
        return 3 * d_model * self.hidden

    def params(self, d_model: int) -> int:
        router = d_model * self.experts
        return (
            router
            + self.experts * self.routed_expert(d_model)
            + self.shared * 3 * d_model * self.shared_width
        )

    def active(self, d_model: int) -> int:
        """Parameters one token touches: the router, its top_k routed experts, the shared ones."""
        return self.params(d_model) - (self.experts - self.top_k) * self.routed_expert(d_model)

    def flops(self, d_model: int, seq_len: int) -> int:
        return 2 * self.active(d_model) * seq_len

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        if self.top_k > self.experts:
            return [(("top_k",), f"{self.top_k} exceeds the {self.experts} experts")]
        return []

    def config_entries(self) -> list[ConfigEntry]:
        entries = [
            ConfigEntry(name="moe_experts", type="int", value=str(self.experts), comment="routed experts"),
            ConfigEntry(
                name="moe_top_k", type="int", value=str(self.top_k), comment="routed experts per token"
            ),
            ConfigEntry(
                name="moe_hidden", type="int", value=str(self.hidden), comment="one routed expert's width"
            ),
            ConfigEntry(name="moe_shared", type="int", value=str(self.shared), comment="shared experts"),
        ]
        if self.shared_hidden is None:
            entries.append(
                ConfigEntry(
                    name="moe_shared_hidden",
                    type="int",
                    rule="self.moe_hidden * self.moe_top_k",
                    comment="one shared expert's width: moe_hidden * moe_top_k",
                )
            )
        else:
            entries.append(ConfigEntry(name="moe_shared_hidden", type="int", value=str(self.shared_hidden)))
        return entries
