"""The spec language: pydantic models with unknown keys rejected and every size bounded.

A spec path equals the module path it configures (``blocks.core.attention`` is the generated
``core.attn``), so errors, reports and generated names line up. The component kinds (attention,
anchor, FFN, norm, loop parts) are declared in :mod:`cartspec.components`; this module composes
them into stages. Rules that need more than one field live in :mod:`cartspec.checks`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from cartspec.components import kinds, union
from cartspec.components.anchor import Anchor
from cartspec.components.base import IDENTIFIER, Identifier, Strict
from cartspec.components.ffn import FFN
from cartspec.components.moe import MoE
from cartspec.components.norm import Norm, Placement
from cartspec.components.state import FromPrelude

__all__ = ["IDENTIFIER", "Anchor", "FFN", "Norm", "Spec"]

# the spec's unions, over the registered kinds (in declaration order)
AnyAttention = union(kinds("attention"))
SelfAttention = union(tuple(k for k in kinds("attention") if not k.reads_anchor))
Gate = union(kinds("gate"))
StateMix = union(kinds("state_mix"))
LoopSignal = union(kinds("loop_embedding"))
ValueEmbedding = union(kinds("value_embedding"))
Readout = union(kinds("readout"))
VALUES_DOC = "Token-indexed tables added to the V of the listed layers, through a gate; null: none."
Inject = union(kinds("inject"))
Lora = union(kinds("lora"))
Halt = union(kinds("halt"))
InitState = union(kinds("init_state"))


# ----------------------------------------------------------------------------- model-wide


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
    embedding_scale: Literal["sqrt_d"] | Annotated[float, Field(gt=0, le=1e4)] = Field(
        1.0,
        description="Multiplies the token embeddings before the first block: a number, or sqrt_d (Huginn: sqrt(d_model)).",
    )

    @field_validator("embedding_scale", mode="before")
    @classmethod
    def _one_scale(cls, v: object) -> object:
        """One message for a wrong scale, not one per member of the union."""
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if v == "sqrt_d" or (number and 0 < v <= 1e4):
            return v
        raise ValueError(f"must be a number in (0, 10^4] or sqrt_d, got {v!r}")

    @property
    def n_heads(self) -> int:
        """d_model / head_dim (the checks refuse a remainder)."""
        return self.d_model // self.head_dim

    @property
    def ffn_hidden(self) -> int:
        return self.ffn.hidden_for(self.d_model)

    @property
    def scales_embedding(self) -> bool:
        """The embeddings are multiplied by a factor other than 1 before the first block."""
        return self.embedding_scale != 1


# ----------------------------------------------------------------------------- blocks


class Stack(Strict):
    """A run of identical layers: x + attn(norm(x)), then x + ffn(norm(x)) (pre-norm), or with each sum normalised too (sandwich)."""

    layers: int = Field(..., ge=1, le=1024, description="Number of layers.")
    attention: SelfAttention = Field(..., description="Self-attention of every layer.")
    norm_placement: Placement | None = Field(
        None, description="pre or sandwich for this stage's layers; null: model.norm.placement."
    )
    value_embedding: ValueEmbedding | None = Field(None, description=VALUES_DOC)
    output_norm: bool = Field(
        False,
        description="A norm (model.norm) on the stage's output: Parcae's ln_prelude, so the loop reads a normalised e.",
    )


class Core(Strict):
    """The recurrent core: `layers` layers run `loops` times, with gate, state mix and loop signal."""

    loops: int = Field(..., ge=1, le=256, description="R: how many times the core runs per forward.")
    shared: bool = Field(
        True,
        description="true: one set of weights for all loops; false: R distinct copies (ablation).",
    )
    layers: int = Field(1, ge=1, le=64, description="Layers inside one loop of the core.")
    attention: AnyAttention = Field(..., description="cross (to an anchor) or self-attention (mha, mla).")
    ffn: MoE | None = Field(
        None,
        description="The core's FFN: null, the model's FFN; moe, a mixture of experts (routed top-k plus shared).",
    )
    value_embedding: ValueEmbedding | None = Field(
        None, description=VALUES_DOC + " Looked up once per forward, read by every loop."
    )
    gate: Gate | None = Field(
        None, description="How the block output meets the loop input; null: h = block(h_in)."
    )
    state_mix: StateMix | None = Field(
        None, description="Blend of past loop states; null: h_in = the last state."
    )
    loop_embedding: LoopSignal | None = Field(
        None, description="Loop-index signal added to h_in; null: none."
    )
    inject: Inject | None = Field(
        None, description="How each loop's input re-reads the prelude output e; null: it does not (CART)."
    )
    lora: Lora | None = Field(
        None, description="A per-loop low-rank correction of the core's output (before the gate); null: none."
    )
    halt: Halt | None = Field(
        None,
        description="Halting: the coda reads a learned weighting of the loop's states; null: the last state.",
    )
    init_state: InitState = Field(
        default_factory=lambda: FromPrelude(kind="prelude"),
        description="Where the loop's state starts: prelude (e), zeros, or trunc_normal noise.",
    )
    norm_placement: Placement | None = Field(
        None, description="pre or sandwich for the core's layers; null: model.norm.placement."
    )
    out_norm: bool = Field(
        False,
        description="A norm on the loop's last state, before the coda (module core_out_norm). "
        "Huginn's ln_f runs here and before the head: share it with `share: [{name: ln_f, members: [core_out_norm, norm]}]`.",
    )
    readout: Readout | None = Field(
        None, description="Maps the last loop state to the coda's input, once per forward; null: none."
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
        description="Module paths: prelude.0, coda.0, stack.3, core.loop[2] (unshared core), block.* for all layers of a block, or the norms norm and core_out_norm.",
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

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_from_a_list(cls, v: object) -> object:
        """YAML has no tuples: a list of two reads as the pair (strict mode would refuse it)."""
        return tuple(v) if isinstance(v, list) else v

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
        description="bible (the embedded King James corpus), a .txt/.jsonl/.parquet file or a folder of them, or .bin token files (nanoGPT's).",
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


class Depth(Strict):
    """How many loops each training step runs: a fixed R, or a depth drawn at every step (or for
    every sequence), with gradients through only the last loops (truncated backprop)."""

    kind: Literal["fixed", "uniform", "poisson", "poisson_lognormal"] = Field(
        "fixed",
        description="fixed: blocks.core.loops; uniform: min..max; poisson: Poisson(mean); "
        "poisson_lognormal: Poisson(LogNormal(ln(mean) - sigma^2/2, sigma)) + 1 (Huginn). Clipped to min..max.",
    )
    mean: float | None = Field(
        None, gt=0, le=4096, description="Mean of poisson and poisson_lognormal; default blocks.core.loops."
    )
    sigma: float = Field(0.5, gt=0, le=4, description="The lognormal's sigma (poisson_lognormal).")
    min: int = Field(1, ge=1, le=4096, description="Fewest loops a draw gives.")
    max: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Most loops a draw gives; default the loop table's rows, else 2 x mean (rounded up).",
    )
    per: Literal["step", "sequence"] = Field(
        "step",
        description="step: one depth for the whole batch (every rank alike); sequence: one per sequence, "
        "finished sequences keep their state while the batch runs to its longest (Parcae).",
    )
    backprop: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Only the last backprop loops carry gradients; earlier loops run without (null: all).",
    )


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
    depth: Depth = Field(default_factory=Depth, description="Loop count per step: fixed or sampled.")

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
