"""The spec language: pydantic models with unknown keys rejected and every size bounded.

A spec path equals the module path it configures (``blocks.core.attention`` is the generated
``core.attn``), so errors, reports and generated names line up. Semantic rules that need more
than one field (anchors, sharing groups, loop tables) live in :mod:`cartspec.graph`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

IDENTIFIER = r"^[a-z][a-z0-9_]{0,63}$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER)]


class Strict(BaseModel):
    """Base of every spec node: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- model-wide


class FFN(Strict):
    """The feed-forward network of every layer."""

    kind: Literal["swiglu", "gelu"] = Field(
        "swiglu", description="swiglu: down(silu(gate(x)) * up(x)); gelu: proj(gelu(fc(x)))."
    )
    hidden: int | None = Field(
        None,
        ge=1,
        le=1 << 18,
        description="Hidden width. Default: swiglu ceil(int(8d/3)/multiple_of)*multiple_of (CART), gelu 4d.",
    )
    multiple_of: int = Field(256, ge=1, le=4096, description="Rounding of the default swiglu hidden width.")

    def hidden_for(self, d_model: int) -> int:
        """The hidden width this FFN resolves to at width ``d_model``."""
        if self.hidden is not None:
            return self.hidden
        if self.kind == "gelu":
            return 4 * d_model
        return math.ceil(int(8 * d_model / 3) / self.multiple_of) * self.multiple_of


class Norm(Strict):
    """The normalisation used before every mixer and FFN, and before the head."""

    kind: Literal["rmsnorm", "layernorm"] = Field(
        "rmsnorm",
        description="rmsnorm (weight only, computed in float32) or layernorm (weight and bias).",
    )
    eps: float = Field(1e-6, gt=0, lt=1, description="Added to the variance for stability.")


class ModelConfig(Strict):
    """Sizes shared by every block."""

    vocab_size: int = Field(..., ge=2, le=1 << 21, description="Token vocabulary size.")
    d_model: int = Field(..., ge=8, le=1 << 16, description="Residual stream width d.")
    max_seq_len: int = Field(
        ..., ge=1, le=1 << 20, description="Longest sequence; also the T of the FLOP report."
    )
    head_dim: int = Field(
        64, ge=4, le=1024, description="Width of one attention head; heads = d_model / head_dim."
    )
    ffn: FFN = Field(default_factory=FFN, description="Feed-forward network.")
    norm: Norm = Field(default_factory=Norm, description="Normalisation.")
    tie_embeddings: bool = Field(
        True, description="The head reads the embedding table (no separate head matrix)."
    )
    init_std: float = Field(
        0.02, gt=0, le=1, description="Std of the normal init of every Linear and the embedding."
    )

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def ffn_hidden(self) -> int:
        return self.ffn.hidden_for(self.d_model)


# ----------------------------------------------------------------------------- attention


class MHA(Strict):
    """Multi-head self-attention with full-rank Q, K, V and O projections (GQA/MQA via kv_heads)."""

    kind: Literal["mha"]
    kv_heads: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="K/V heads; default = query heads (MHA); fewer = GQA; 1 = MQA.",
    )
    rope: bool = Field(True, description="Rotary position embedding on Q and K.")
    rope_base: float = Field(10000.0, gt=1, le=1e9, description="RoPE base frequency.")
    causal: bool = Field(True, description="Causal mask.")


class MLA(Strict):
    """CART's simplified latent-KV attention: full-rank Q; K and V up-projected from one latent."""

    kind: Literal["mla"]
    kv_latent: int | None = Field(
        None, ge=1, le=1 << 16, description="Latent width of K/V; default d_model / 4."
    )
    rope: bool = Field(True, description="Rotary position embedding on Q and K (full head dim).")
    rope_base: float = Field(10000.0, gt=1, le=1e9, description="RoPE base frequency.")
    causal: bool = Field(True, description="Causal mask.")


class Cross(Strict):
    """Cross-attention from the loop state to an anchor's K and V (only q_proj and o_proj)."""

    kind: Literal["cross"]
    to: Identifier = Field("anchor", description="The anchor block whose K, V are read.")
    rope: Literal[False] = Field(False, description="Always false: the anchor's K carries no RoPE.")
    causal: bool = Field(
        True,
        description="Query t sees anchor positions 0..t. CART needs true (false leaks the future).",
    )


SelfAttention = Annotated[MHA | MLA, Field(discriminator="kind")]
AnyAttention = Annotated[MHA | MLA | Cross, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- blocks


class Stack(Strict):
    """A run of identical pre-norm layers: x + attn(norm(x)), then x + ffn(norm(x))."""

    layers: int = Field(..., ge=1, le=1024, description="Number of layers.")
    attention: SelfAttention = Field(..., description="Self-attention of every layer.")


class Anchor(Strict):
    """K and V computed from one block's output, read by cross-attention in the core."""

    from_: Identifier = Field(
        "prelude", alias="from", description="Whose output feeds the anchor: prelude or embedding."
    )
    kind: Literal["mla_kv", "kv"] = Field(
        "mla_kv", description="mla_kv: kv_down, k_up, v_up (CART); kv: full-rank k_proj, v_proj."
    )
    kv_latent: int | None = Field(
        None, ge=1, le=1 << 16, description="Latent width for mla_kv; default d_model / 4."
    )
    kv_heads: int | None = Field(
        None, ge=1, le=4096, description="K/V heads for kind kv; default = query heads."
    )
    recompute: Literal["never", "every_loop"] = Field(
        "never",
        description="never: K, V once per forward; every_loop: from each loop's input (the unfrozen-KV ablation).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LTIGate(Strict):
    """CART's "LTI gate": a learned per-channel decay sigmoid(a) on the loop input."""

    kind: Literal["lti"]
    init: float = Field(0.9, gt=0, lt=1, description="Initial sigmoid(a); a starts at logit(init).")
    form: Literal["cart", "contractive"] = Field(
        "cart",
        description="cart: sigmoid(a)*h_in + block(h_in) (block keeps its residual, as the author's code); contractive: sigmoid(a)*h_in + delta.",
    )


class ResidualGate(Strict):
    """h = h_in + block(h_in): the author's disable_lti ablation (block keeps its residual)."""

    kind: Literal["residual"]


Gate = Annotated[LTIGate | ResidualGate, Field(discriminator="kind")]


class HyperMix(Strict):
    """CART's hyper-connection: a softmax-weighted blend of the last `taps` loop states."""

    kind: Literal["hyper"]
    taps: int = Field(3, ge=1, le=16, description="How many past states are blended.")
    init: list[float] | None = Field(
        None, description="Initial raw weights (before softmax); default [1, 0, ...]."
    )

    @field_validator("init")
    @classmethod
    def _init_matches_taps(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        taps = info.data.get("taps")  # absent when taps itself is invalid
        if v is not None and taps is not None and len(v) != taps:
            raise ValueError(f"{len(v)} weights but taps is {taps}")
        return v

    @field_validator("init")
    @classmethod
    def _init_finite(cls, v: list[float] | None) -> list[float] | None:
        # the weights become float literals in the generated code: nan or inf would not even import
        if v is not None and not all(math.isfinite(w) and abs(w) <= 1e4 for w in v):
            raise ValueError(f"weights must be finite numbers in [-1e4, 1e4], got {v}")
        return v

    @property
    def init_weights(self) -> list[float]:
        return list(self.init) if self.init is not None else [1.0] + [0.0] * (self.taps - 1)


class LoopEmbedding(Strict):
    """A fixed sinusoid table indexed by the loop number, projected to d_model by a learned Linear."""

    kind: Literal["sinusoidal"]
    dim: int = Field(32, ge=2, le=4096, description="Width of the sinusoid table (even).")
    max_loops: int = Field(
        16, ge=1, le=4096, description="Rows of the table: the most loops inference may run."
    )

    @field_validator("dim")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (sin and cos pairs)")
        return v


class Core(Strict):
    """The recurrent core: `layers` layers run `loops` times, with gate, state mix and loop signal."""

    loops: int = Field(..., ge=1, le=256, description="R: how many times the core runs per forward.")
    shared: bool = Field(
        True,
        description="true: one set of weights for all loops; false: R distinct copies (ablation).",
    )
    layers: int = Field(1, ge=1, le=64, description="Layers inside one loop of the core.")
    attention: AnyAttention = Field(..., description="cross (to an anchor) or self-attention (mha, mla).")
    gate: Gate | None = Field(
        None, description="How the block output meets the loop input; null: h = block(h_in)."
    )
    state_mix: HyperMix | None = Field(
        None, description="Blend of past loop states; null: h_in = the last state."
    )
    loop_embedding: LoopEmbedding | None = Field(
        None, description="Loop-index signal added to h_in; null: none."
    )
    checkpoint: bool = Field(
        False, description="Per-loop activation checkpointing (recompute each loop in backward)."
    )


class Blocks(Strict):
    """The stages, in execution order: prelude, anchor, core, coda; or one dense stack."""

    stack: Stack | None = Field(None, description="A plain dense model: this stack alone.")
    prelude: Stack | None = Field(
        None, description="Unique layers before the loop; their output e feeds the anchor."
    )
    anchor: Anchor | None = Field(None, description="K, V for the core's cross-attention.")
    core: Core | None = Field(None, description="The recurrent core.")
    coda: Stack | None = Field(None, description="Unique layers after the loop.")


class ShareGroup(Strict):
    """Modules that read one set of parameters (ALBERT-style); members must be structurally identical."""

    name: Identifier = Field(..., description="Name of the sharing group.")
    members: list[str] = Field(
        ...,
        min_length=1,  # one glob (prelude.*) can name many; the graph checks for two distinct modules
        max_length=4096,
        description="Module paths: prelude.0, coda.0, stack.3, core.loop[2] (unshared core), or block.* for all layers of a block.",
    )


# ----------------------------------------------------------------------------- training recipe


class Optimizer(Strict):
    kind: Literal["adamw"] = Field("adamw", description="Optimizer.")
    lr: float = Field(3e-4, gt=0, le=10, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, le=1, description="AdamW epsilon.")
    weight_decay: float = Field(0.1, ge=0, le=10, description="Decoupled weight decay.")
    decay: Literal["all", "matrices"] = Field(
        "all",
        description="all: every parameter decays (as the CART paper); matrices: norms, gates, mixing weights exempt.",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class Schedule(Strict):
    kind: Literal["cosine", "constant"] = Field(
        "cosine", description="After warmup: cosine decay to min_lr at the last step, or constant."
    )
    warmup: int = Field(100, ge=0, le=10_000_000, description="Linear warmup steps.")
    min_lr: float = Field(3e-5, ge=0, le=10, description="Floor of the cosine decay.")


class Data(Strict):
    source: str = Field(
        "bible",
        min_length=1,
        max_length=4096,
        description="bible (the embedded King James corpus), a .txt/.jsonl file or folder, or .bin token files.",
    )
    tokenizer: Literal["bpe", "file", "bytes"] = Field(
        "bpe",
        description="bpe: byte-level BPE trained locally at vocab_size; file: tokenizer_path; bytes: raw bytes.",
    )
    tokenizer_path: str | None = Field(
        None, max_length=4096, description="A tokenizer.json, for tokenizer: file."
    )
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Held-out share of the documents.")


class Eval(Strict):
    interval: int = Field(500, ge=1, le=10_000_000, description="Steps between validation runs.")
    batches: int = Field(
        50, ge=1, le=100_000, description="Validation sequences per run (the paper: first 50)."
    )


class Checkpointing(Strict):
    interval: int = Field(500, ge=1, le=10_000_000, description="Steps between checkpoints.")
    keep: int = Field(3, ge=1, le=1000, description="How many recent checkpoints are kept.")


class Train(Strict):
    """The training recipe the runtime follows."""

    steps: int = Field(1000, ge=1, le=100_000_000, description="Optimizer steps.")
    micro_batch: int = Field(8, ge=1, le=65536, description="Sequences per forward pass.")
    grad_accum: int = Field(1, ge=1, le=65536, description="Micro-batches per optimizer step.")
    seq_len: int | None = Field(
        None, ge=1, le=1 << 20, description="Training sequence length; default model.max_seq_len."
    )
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer.")
    schedule: Schedule = Field(default_factory=Schedule, description="Learning-rate schedule.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; null: no clipping.")
    seed: int = Field(42, ge=0, le=2**63 - 1, description="Seed of the init, and of everything else random.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    compile: Literal["off", "blocks", "model"] = Field(
        "off",
        description="off: eager; blocks: torch.compile each unique block once (the shared core once), so a new "
        "loop count never recompiles; model: one whole-model graph unrolled over the loops. "
        "true and false read as blocks and off.",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode, for blocks and model."
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Under torchrun: ddp keeps a whole model per process; fsdp shards it (one unit per block, the shared core as one).",
    )
    data: Data = Field(default_factory=Data, description="Corpus and tokenizer.")
    eval: Eval = Field(default_factory=Eval, description="Validation.")
    checkpoint: Checkpointing = Field(default_factory=Checkpointing, description="Checkpoints.")
    log_interval: int = Field(10, ge=1, le=10_000_000, description="Steps between metric lines.")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, v: object) -> object:
        """Specs written when compile was a boolean: true compiles the blocks, false stays eager."""
        if isinstance(v, bool):
            return "blocks" if v else "off"
        return v


# ----------------------------------------------------------------------------- the spec


class Spec(Strict):
    """One model and its training recipe."""

    name: Identifier = Field(..., description="Becomes the generated file's name: generated/<name>.py.")
    description: str = Field("", max_length=4096, description="Free text for people; never reaches code.")
    model: ModelConfig
    blocks: Blocks
    share: list[ShareGroup] = Field(default_factory=list, description="Explicit sharing groups.")
    train: Train = Field(default_factory=Train, description="Training recipe.")

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step: micro_batch x grad_accum x seq_len (any process count)."""
        return self.train.micro_batch * self.train.grad_accum * self.seq_len
