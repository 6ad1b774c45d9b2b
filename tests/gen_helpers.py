"""Helpers for the tests of generated models: shipped specs, small variants compiled into a temporary
folder, weights at a scale where every path of the forward pass shows in the logits, and counting
parameter uses with forward hooks."""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from cartspec.accounting import ParamReport, account
from cartspec.resolve import Resolved, resolve
from cartspec.runtime.generated import compiled_module, import_module

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
GENERATED = ROOT / "generated"
CART_TINY = SPECS / "tiny" / "cart_tiny.yaml"
DENSE_TINY = SPECS / "tiny" / "dense_tiny.yaml"

# A CART of ~70k parameters on raw bytes (no tokenizer to train): a training step takes a few
# milliseconds on a CPU. Runtime tests add their recipe (batch, steps, intervals) to these.
BYTES_CART_SETS = [
    "model.d_model=32",
    "model.head_dim=16",
    "model.vocab_size=300",
    "model.max_seq_len=32",
    "train.seq_len=32",
    "train.data.tokenizer=bytes",
]

# BYTES_CART_SETS with a short recipe: evaluation and logging every few steps.
SHORT_RECIPE = [
    *BYTES_CART_SETS,
    "train.micro_batch=4",
    "train.schedule.warmup=2",
    "train.eval.batches=4",
    "train.log_interval=2",
]


def word_corpus(folder: Path, seed: int = 0, paragraphs: int = 100) -> Path:
    """A small .txt corpus of random words in paragraphs (documents): tokenized in a blink."""
    import random

    rng = random.Random(seed)
    words = ["and", "the", "lord", "said", "unto", "him", "in", "that", "day", "of", "light"]
    path = folder / f"corpus{seed}.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(50)) for _ in range(paragraphs)))
    return path


SHIPPED = sorted(
    p.relative_to(ROOT).as_posix()
    for p in SPECS.rglob("*.yaml")
    if "sweeps" not in p.relative_to(SPECS).parts
)

# cart_tiny made smaller still: d=64, 4 heads of 16, P=2, R=3, one coda layer, T <= 32
SMALL = {"vocab_size": 96, "d_model": 64, "n_heads": 4, "ffn_hidden": 192, "prelude_layers": 2, "n_loops": 3}
SMALL_SETS = (
    "model.vocab_size=96",
    "model.d_model=64",
    "model.head_dim=16",
    "model.max_seq_len=32",
    "train.seq_len=32",
    "train.micro_batch=2",
    "blocks.prelude.layers=2",
    "blocks.core.loops=3",
)
SMALL_DENSE_SETS = tuple(s for s in SMALL_SETS if not s.startswith("blocks.")) + ("blocks.stack.layers=2",)


# Small variants that reach every template branch: each must build, count right and run.
VARIANTS = {
    "cart": (CART_TINY, ()),
    "contractive": (CART_TINY, ("blocks.core.gate.form=contractive",)),
    "core_two_layers": (CART_TINY, ("blocks.core.layers=2",)),
    "core_two_layers_contractive": (
        CART_TINY,
        ("blocks.core.layers=2", "blocks.core.gate.form=contractive"),
    ),
    "no_gate": (CART_TINY, ("blocks.core.gate=null",)),
    "residual_no_hc_no_lie": (
        CART_TINY,
        (
            "blocks.core.gate.kind=residual",
            "blocks.core.gate.init=null",
            "blocks.core.gate.form=null",
            "blocks.core.state_mix=null",
            "blocks.core.loop_embedding=null",
        ),
    ),
    "one_tap_mix": (CART_TINY, ("blocks.core.state_mix.taps=1", "blocks.core.state_mix.init=[0.5]")),
    "unshared": (CART_TINY, ("blocks.core.shared=false",)),
    "unfrozen_kv": (CART_TINY, ("blocks.anchor.recompute=every_loop",)),
    "self_attn_core": (
        CART_TINY,
        (
            "blocks.anchor=null",
            "blocks.core.shared=false",
            "blocks.core.attention.kind=mla",
            "blocks.core.attention.to=null",
            "blocks.core.attention.rope=true",
        ),
    ),
    "anchor_full_rank_gqa": (CART_TINY, ("blocks.anchor.kind=kv", "blocks.anchor.kv_heads=2")),
    "anchor_from_embedding": (CART_TINY, ("blocks.anchor.from=embedding",)),
    "mha_prelude_no_rope": (
        CART_TINY,
        ("blocks.prelude.attention={kind: mha, rope: false, causal: true}",),
    ),
    "bidirectional_coda": (CART_TINY, ("blocks.coda.attention.causal=false",)),
    "layernorm_gelu_untied": (
        CART_TINY,
        ("model.norm.kind=layernorm", "model.ffn.kind=gelu", "model.tie_embeddings=false"),
    ),
    "albert_prelude": (CART_TINY, ("share=[{name: albert, members: ['prelude.*']}]",)),
    "share_prelude_with_coda": (CART_TINY, ("share=[{name: ends, members: [prelude.1, coda.0]}]",)),
    "share_unshared_core_loops": (
        CART_TINY,
        ("blocks.core.shared=false", "share=[{name: pair, members: ['core.loop[0]', 'core.loop[2]']}]"),
    ),
    "prelude_and_coda_without_core": (CART_TINY, ("blocks.anchor=null", "blocks.core=null")),
    "named_like_a_building_block": (CART_TINY, ("name=rotary",)),
    "huginn_parts": (
        CART_TINY,
        (
            "blocks.prelude.attention={kind: mha, fused_qkv: true, qk_bias: true}",
            "model.ffn.fused=true",
            "model.norm.placement=sandwich",
            "model.embedding_scale=sqrt_d",
            "blocks.core.out_norm=true",
            "share=[{name: ln_f, members: [core_out_norm, norm]}]",
        ),
    ),
    "interleaved_rope": (
        CART_TINY,
        ("blocks.prelude.attention.rope_style=interleaved", "blocks.coda.attention.rope_style=interleaved"),
    ),
    "noisy_start_add_inject": (
        CART_TINY,
        (
            "blocks.core.init_state={kind: trunc_normal, scale: sqrt_d, seed: 3}",
            "blocks.core.inject={kind: add}",
        ),
    ),
    "zero_start_self_attn_core": (
        CART_TINY,
        (
            "blocks.anchor=null",
            "blocks.core.attention={kind: mha, rope: true}",
            "blocks.core.init_state={kind: zeros}",
            "blocks.core.inject={kind: add}",
        ),
    ),
    "dense": (DENSE_TINY, ()),
    "dense_gqa": (DENSE_TINY, ("blocks.stack.attention.kv_heads=2",)),
    "dense_mqa_no_rope": (DENSE_TINY, ("blocks.stack.attention={kind: mha, kv_heads: 1, rope: false}",)),
}


def small_ffn_hidden(d: int, multiple_of: int = 64) -> int:
    """The author's SwiGLU rule with cart_tiny's rounding: ceil(int(8d/3) / m) * m."""
    return math.ceil(int(8 * d / 3) / multiple_of) * multiple_of


def compile_variant(
    out_dir: Path, label: str, sets: tuple[str, ...] = (), spec: Path = CART_TINY, small: bool = True
) -> tuple[Resolved, ModuleType]:
    """Resolve ``spec`` with the small sizes plus ``sets``, compile it to ``out_dir/<label>.py``, import it."""
    base = (SMALL_DENSE_SETS if spec == DENSE_TINY else SMALL_SETS) if small else ()
    resolved = resolve(spec, [*base, *sets])
    module, _ = compiled_module(resolved, out_dir, f"{label}.py")
    return resolved, module


@cache
def shipped(spec: str) -> tuple[Resolved, ParamReport, ModuleType]:
    """A shipped spec, its accounting and its committed generated module."""
    resolved = resolve(ROOT / spec)
    return resolved, account(resolved.graph), import_module(GENERATED / f"{resolved.spec.name}.py")


def build(module: ModuleType, device: str = "cpu") -> nn.Module:
    with torch.device(device):
        return module.Model()


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Weights at O(1) activation scale (matrices N(0, 1/fan_in), norms 1 +- 0.2, gate and blend
    logits N(0, 1)), so a wrong residual, mask, rotation or blend moves the logits by far more than
    float32 rounding. Shared parameters are visited once."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif name.endswith("norm.weight") or name.endswith("_norm.weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:  # gate.a, state_mix.weights
                p.copy_(noise)
    return model


def transfer_(model: nn.Module, source: dict[str, torch.Tensor], seed: int) -> set[str]:
    """Give ``model`` the weights of ``source`` where it has the same parameter (an unshared core's
    ``core.<r>.X`` takes the shared ``core.X``); randomize the rest. Returns the names not transferred."""
    randomize_(model, seed)
    state = model.state_dict()
    fresh = set()
    for name in state:
        m = re.fullmatch(r"core\.\d+\.(.*)", name)
        src = name if name in source else (f"core.{m[1]}" if m and f"core.{m[1]}" in source else None)
        if src is not None and source[src].shape == state[name].shape:
            state[name] = source[src]
        else:
            fresh.add(name)
    model.load_state_dict(state)
    return fresh


def count_parameter_uses(model: nn.Module, *args, **kwargs) -> int:
    """Sum over one forward pass of (direct parameters of the module called) for every module call:
    the size of the equivalent unrolled network, as docs/accounting.md defines effective."""
    total = [0]
    handles = []
    for module in model.modules():  # unique modules: a shared one gets one hook, fired per call
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n:
            handles.append(module.register_forward_hook(lambda *_, n=n: total.__setitem__(0, total[0] + n)))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def tokens(batch: int, seq: int, vocab: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g).to(device)


def assert_clean_error(result: tuple[int, str, str], *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr that names the problem, and no traceback anywhere.
    A problem found once the run has started (data prepared, steps trained) follows the run's
    opening line and progress lines, which stderr gets when it is not a terminal."""
    rc, out, err = result
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    lines = [
        line for line in err.strip().splitlines() if not line.startswith(("cart_tiny: ", "cart_tiny step "))
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
