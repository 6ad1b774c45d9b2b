"""Mutation testing: plant one plausible bug at a time and see whether the tests that own that part
of the code notice.

Each mutant is (file, exact old text, new text, the test files that own that part). The harness
copies the working tree once into a scratch folder (``git ls-files``: tracked and untracked files
that git does not ignore), points Python there (a ``sitecustomize`` maps ``cartspec`` and
``cartspec.runtime`` to the copy, ahead of this checkout's editable install), and for each mutant
writes the mutated file, runs the owning tests with ``-x`` under a timeout, and restores the file.
A mutant is *killed* when the tests fail, *survives* when they pass, *timeout* when they run past
the limit (counted as killed, as mutation tools do: the tests did not pass). The score is
killed / all. Not run by CI: it takes tens of minutes.

    python bench/mutation.py --list                # the mutants, one a line
    python bench/mutation.py                       # run them all; a table and the score
    python bench/mutation.py --only 3,17 --timeout 300 --out bench/results/mutation.txt
    python bench/mutation.py --baseline --only 1  # first: the unmutated copy passes every owning set
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


# owners, fastest and most targeted first (-x stops at the first failure)
FORMULAS = ("tests/test_accounting.py", "tests/test_properties.py")
VALIDATION = ("tests/test_validation.py", "tests/test_invalid_specs.py")
MODELS = ("tests/test_oracles.py", "tests/test_generated_models.py")
NAMES = ("tests/test_codegen.py", "tests/test_shipped_specs.py")
CHECKPOINTS = ("tests/test_failure_injection.py", "tests/test_checkpoint.py")
RUNFILES = ("tests/test_failure_injection.py", "tests/test_rundir.py")
DATA = ("tests/test_data.py",)
RUNTIME = ("tests/test_runtime.py",)
LOADER = ("tests/test_loader.py",)
DECODING = ("tests/test_decoding.py",)
DEPTH = ("tests/test_depth.py",)

C, T = "cartspec/components/", "cartspec/codegen/templates/"

MUTANTS = [
    # ------------------------------------------------------------------ formulas: components/*.py
    Mutant(
        C + "attention.py",
        "return 2 * m.d_model * m.d_model + 2 * m.d_model * self.size(m) * m.head_dim",
        "return 2 * m.d_model * m.d_model + 2 * m.d_model * m.n_heads * m.head_dim",
        FORMULAS,
        "MHA parameters ignore kv_heads (GQA counted as MHA)",
    ),
    Mutant(
        C + "attention.py",
        "return 2 * self.params(m) * seq_len + 4 * seq_len * seq_len * m.d_model",
        "return 2 * self.params(m) * seq_len + 2 * seq_len * seq_len * m.d_model",
        FORMULAS,
        "attention score term halved (QK^T only, AV dropped)",
    ),
    Mutant(
        C + "attention.py",
        "return 2 * m.d_model * m.d_model + 3 * m.d_model * self.size(m)  # q, o",
        "return 2 * m.d_model * m.d_model + 2 * m.d_model * self.size(m)  # q, o",
        FORMULAS,
        "MLA parameters forget one of kv_down, k_up, v_up",
    ),
    Mutant(
        C + "attention.py",
        "return latent if latent is not None else m.d_model // 4",
        "return latent if latent is not None else m.d_model // 2",
        FORMULAS,
        "default K/V latent d/2 instead of d/4",
    ),
    Mutant(
        C + "attention.py",
        "if kv_heads is not None and (kv_heads > n_heads or n_heads % kv_heads):",
        "if kv_heads is not None and kv_heads > n_heads:",
        VALIDATION,
        "kv_heads that does not divide the query heads accepted",
    ),
    Mutant(
        C + "attention.py",
        "    def grouped(self, m: ModelConfig) -> bool:\n        return self.size(m) < m.n_heads",
        "    def grouped(self, m: ModelConfig) -> bool:\n        return self.size(m) <= m.n_heads",
        NAMES,
        "MHA taken for GQA (off by one in the comparison)",
    ),
    Mutant(
        C + "attention.py",
        'return ("" if rope else "NoRope") + ("" if causal else "Bidirectional")',
        'return ("" if rope else "NoRope") + ("Bidirectional" if causal else "")',
        NAMES,
        "class-name suffix flipped (causal named bidirectional)",
    ),
    Mutant(
        C + "anchor.py",
        "return 2 * m.d_model * r.kv_heads * m.head_dim",
        "return 2 * m.d_model * m.d_model",
        FORMULAS,
        "full-rank anchor parameters ignore kv_heads",
    ),
    Mutant(
        C + "anchor.py",
        'return self.kind == "kv" and self.resolved(m).kv_heads < m.n_heads',
        'return self.kind == "kv" and self.resolved(m).kv_heads == m.n_heads',
        MODELS,
        "anchor K/V heads repeated exactly when they need not be",
    ),
    Mutant(
        C + "anchor.py",
        'return self.model_copy(update={"kv_heads": kv_heads_or_all(m, self.kv_heads)})',
        'return self.model_copy(update={"kv_heads": self.kv_heads or 1})',
        FORMULAS,
        "anchor kv_heads defaults to 1 (MQA) instead of the query heads",
    ),
    Mutant(
        C + "ffn.py",
        "return math.ceil(int(8 * d_model / 3) / self.multiple_of) * self.multiple_of",
        "return math.floor(int(8 * d_model / 3) / self.multiple_of) * self.multiple_of",
        FORMULAS,
        "SwiGLU hidden width rounded down",
    ),
    Mutant(
        C + "ffn.py",
        '_FOUR_D = ("gelu", "relu2")',
        '_FOUR_D = ("relu2",)',
        FORMULAS,
        "GELU default hidden 8d/3 (SwiGLU's) instead of 4d",
    ),
    Mutant(
        C + "ffn.py",
        '"swiglu": (3, "SwiGLU", "swiglu.py.j2")',
        '"swiglu": (2, "SwiGLU", "swiglu.py.j2")',
        FORMULAS,
        "SwiGLU counted with two matrices",
    ),
    Mutant(
        C + "ffn.py",
        "        return 2 * self.params(d_model) * seq_len",
        "        return self.params(d_model) * seq_len",
        FORMULAS,
        "FFN FLOPs one per parameter per token",
    ),
    Mutant(
        C + "norm.py",
        '"layernorm": (2, ',
        '"layernorm": (1, ',
        FORMULAS,
        "LayerNorm bias not counted",
    ),
    Mutant(
        C + "norm.py",
        "        return 2 * self.params(d_model) * seq_len",
        "        return self.params(d_model) * seq_len",
        FORMULAS,
        "norm FLOPs one per parameter per token",
    ),
    Mutant(
        C + "loop.py",
        "return d_model  # a",
        "return 2 * d_model  # a",
        FORMULAS,
        "LTI gate counted twice its size",
    ),
    Mutant(
        C + "loop.py",
        'return self.form == "contractive"',
        'return self.form == "cart"',
        MODELS,
        "gate forms swapped (cart takes the update)",
    ),
    Mutant(
        C + "loop.py",
        'return f"h_in + {out}"',
        'return f"{out}"',
        MODELS,
        "residual gate drops h_in",
    ),
    Mutant(
        C + "loop.py",
        'return f"self.gate(h_in, {out})"',
        'return f"self.gate({out}, h_in)"',
        MODELS,
        "LTI gate operands swapped (decay on the block output)",
    ),
    Mutant(
        C + "loop.py",
        "return self.taps  # one raw weight per tap",
        "return self.taps + 1  # one raw weight per tap",
        FORMULAS,
        "state mix counted one weight too many",
    ),
    Mutant(
        C + "loop.py",
        "[1.0] + [0.0] * (self.taps - 1)",
        "[0.0] * (self.taps - 1) + [1.0]",
        MODELS,
        "blend initialised on the oldest state",
    ),
    Mutant(
        C + "loop.py",
        "return self.dim * d_model  # proj",
        "return (self.dim + 1) * d_model  # proj",
        FORMULAS,
        "loop embedding counted with a bias row",
    ),
    # ------------------------------------------------------------------ accounting.py, graph.py, architecture.py
    Mutant(
        "cartspec/accounting.py",
        "counted = {g.name: 1 if g.loop_control else calls[g.name] for g in groups}",
        "counted = {g.name: calls[g.name] for g in groups}",
        FORMULAS,
        "paper's effective counts loop control once per loop",
    ),
    Mutant(
        "cartspec/accounting.py",
        'EMBEDDING_KINDS = ("embedding", "value_embedding", "head")',
        'EMBEDDING_KINDS = ("embedding", "value_embedding")',
        FORMULAS,
        "untied head counted as non-embedding",
    ),
    Mutant(
        "cartspec/accounting.py",
        "head_per_sequence=2 * m.vocab_size * m.d_model * T,",
        "head_per_sequence=m.vocab_size * m.d_model * T,",
        FORMULAS,
        "head FLOPs halved",
    ),
    Mutant(
        "cartspec/accounting.py",
        "train_per_token=3 * forward / T,",
        "train_per_token=2 * forward / T,",
        FORMULAS,
        "training FLOPs 2x forward",
    ),
    Mutant(
        "cartspec/accounting.py",
        "attention_uses = sum(u.attention for u in graph.uses)",
        "attention_uses = sum(1 for u in graph.uses if u.attention)",
        FORMULAS,
        "attention uses count a multi-layer core loop once",
    ),
    Mutant(
        "cartspec/accounting.py",
        "forward = sum(g.flops * counted[g.name] for g in groups)",
        "forward = sum(g.flops * calls[g.name] for g in groups)",
        FORMULAS,
        "forward FLOPs count loop control per loop",
    ),
    Mutant(
        "cartspec/graph.py",
        "        for j in range(core.layers)\n    )",
        "        for j in range(1)\n    )",
        FORMULAS,
        "FLOPs forget the layers of a multi-layer core",
    ),
    Mutant(
        "cartspec/graph.py",
        "    for j in range(core.layers):\n        for k, v in arch.layer_parts(",
        "    for j in range(1):\n        for k, v in arch.layer_parts(",
        FORMULAS,
        "parameters forget the layers of a multi-layer core",
    ),
    Mutant(
        "cartspec/graph.py",
        'if anchor is not None and anchor.recompute == "every_loop":',
        "if anchor is not None:",
        FORMULAS,
        "a frozen anchor counted in every loop too",
    ),
    Mutant(
        "cartspec/graph.py",
        'use(Use("head", "head", "embedding", "embedding", call=False), last)',
        'use(Use("head", "head", "embedding", "embedding", call=True), last)',
        FORMULAS,
        "tied head counted as a second call of the embedding",
    ),
    Mutant(
        "cartspec/architecture.py",
        '"norms": NORMS_PER_LAYER[placement] * m.norm.params(m.d_model),',
        '"norms": m.norm.params(m.d_model),',
        FORMULAS,
        "one norm per layer counted",
    ),
    Mutant(
        "cartspec/architecture.py",
        "norms = NORMS_PER_LAYER[placement] * m.norm.flops(m.d_model, T)",
        "norms = m.norm.flops(m.d_model, T)",
        FORMULAS,
        "one norm per layer in the FLOPs",
    ),
    # ------------------------------------------------------------------ templates and the generated forward
    Mutant(
        T + "mha.py.j2",
        "k = k.repeat_interleave(self.n_heads // self.kv_heads, dim=1)\n"
        "        v = v.repeat_interleave(self.n_heads // self.kv_heads, dim=1)",
        "k = k.repeat(1, self.n_heads // self.kv_heads, 1, 1)\n"
        "        v = v.repeat(1, self.n_heads // self.kv_heads, 1, 1)",
        MODELS,
        "GQA pairs K/V heads with the wrong query heads",
    ),
    Mutant(
        T + "mha.py.j2",
        "y = attend(q, k, v, causal={{ cls.causal }})",
        "y = attend(q, k, v, causal=True)",
        MODELS,
        "self-attention ignores causal: false",
    ),
    Mutant(
        T + "cross.py.j2",
        "y = attend(q, k, v, causal={{ cls.causal }})",
        "y = attend(q, k, v, causal=True)",
        MODELS,
        "cross-attention ignores causal: false",
    ),
    Mutant(
        T + "mla.py.j2",
        "v = split_heads(self.v_up(latent), self.n_heads)",
        "v = split_heads(self.k_up(latent), self.n_heads)",
        MODELS,
        "latent attention takes V from K's projection",
    ),
    Mutant(
        T + "anchor.py.j2",
        "split_heads(self.v_up(latent), self.n_heads)",
        "split_heads(self.k_up(latent), self.n_heads)",
        MODELS,
        "latent anchor's V from K's projection",
    ),
    Mutant(
        T + "core.py.j2",
        "delta = delta + layer(x + delta, k, v)",
        "delta = delta + layer(x, k, v)",
        MODELS,
        "contractive multi-layer core: each layer reads the loop input, not the running state",
    ),
    Mutant(
        T + "core.py.j2",
        "delta = delta + layer(x + delta, layer_kv, start)",
        "delta = delta + layer(x, layer_kv, start)",
        MODELS,
        "contractive multi-layer self-attention core: each layer reads the loop input",
    ),
    Mutant(
        T + "core.py.j2",
        "return delta + self.ffn(self.ffn_norm(x + delta))",
        "return delta + self.ffn(self.ffn_norm(x))",
        MODELS,
        "contractive core layer: the FFN skips the attention update",
    ),
    Mutant(
        T + "rotary.py.j2",
        "self.sin[:, : self.head_dim // 2].neg_()",
        "self.sin[:, self.head_dim // 2 :].neg_()",
        MODELS,
        "RoPE turns the wrong way",
    ),
    Mutant(
        T + "rmsnorm.py.j2",
        "F.rms_norm(x, (x.size(-1),), eps=self.eps)",
        "F.rms_norm(x, x.shape[-2:], eps=self.eps)",
        MODELS,
        "RMSNorm reduces over positions too, not channels alone",
    ),
    Mutant(
        T + "hyper_mix.py.j2",
        "for i in range(1, len(states)):",
        "for i in range(2, len(states)):",
        MODELS,
        "state mix drops its second tap",
    ),
    Mutant(
        T + "loop_embedding.py.j2",
        "self.table[:, 1::2] = torch.cos(position * freq)",
        "self.table[:, 1::2] = torch.sin(position * freq)",
        MODELS,
        "loop table: sin in the cos columns",
    ),
    Mutant(
        T + "lti_gate.py.j2",
        "return torch.sigmoid(self.a) * h_in + out",
        "return torch.sigmoid(self.a) * out + h_in",
        MODELS,
        "LTI gate decays the block output instead of the input",
    ),
    Mutant(
        T + "gelu.py.j2",
        "F.gelu(self.fc(x))",
        'F.gelu(self.fc(x), approximate="tanh")',
        MODELS,
        "GELU's tanh approximation instead of erf",
    ),
    Mutant(
        T + "swiglu.py.j2",
        "F.silu(self.gate_proj(x)) * self.up_proj(x)",
        "F.silu(self.up_proj(x)) * self.gate_proj(x)",
        MODELS,
        "SwiGLU gate and up swapped",
    ),
    Mutant(
        T + "layer.py.j2",
        "return x + self.ffn(self.ffn_norm(x))",
        "return x + self.ffn(self.attn_norm(x))",
        MODELS,
        "layer's FFN reads the attention norm",
    ),
    Mutant(
        T + "heads.py.j2",
        "return y.transpose(1, 2).reshape(B, T, H * D)",
        "return y.reshape(B, T, H * D)",
        MODELS,
        "heads merged without the transpose",
    ),
    Mutant(
        "cartspec/codegen/forward.py",
        'source = "e" if anchor.from_ == "prelude" or not prelude else "embedded"',
        'source = "e"',
        MODELS,
        "anchor.from: embedding ignored",
    ),
    Mutant(
        "cartspec/codegen/forward.py",
        '"shifted = [h, *states[:-1]]  # newest first",',
        '"shifted = [*states[1:], h]  # newest first",',
        MODELS,
        "state buffer kept oldest first",
    ),
    # ------------------------------------------------------------------ runtime
    Mutant(
        "runtime/checkpoint.py",
        'tmp = root / f".{final.name}.{os.getpid()}.tmp"',
        "tmp = final",
        CHECKPOINTS,
        "checkpoint written straight into step_N (not atomic)",
    ),
    Mutant(
        "runtime/checkpoint.py",
        "for old in list_checkpoints(run_dir)[:-keep]:",
        "for old in list_checkpoints(run_dir)[: -keep - 1]:",
        CHECKPOINTS,
        "one checkpoint more than keep is kept",
    ),
    Mutant(
        "runtime/checkpoint.py",
        '    torch.set_rng_state(rng["cpu"])',
        '    rng["cpu"]',
        CHECKPOINTS,
        "RNG state not restored",
    ),
    Mutant(
        "runtime/checkpoint.py",
        '    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):\n        if not',
        '    for name in ("model.safetensors", "optimizer.safetensors"):\n        if not',
        CHECKPOINTS,
        "read_state does not require rng.safetensors",
    ),
    Mutant(
        "runtime/checkpoint.py",
        "        os.replace(final, old)\n",
        "",
        CHECKPOINTS,
        "saving a step again does not set the old folder aside",
    ),
    Mutant(
        "runtime/checkpoint.py",
        "        if old is not None:  # the new one cannot take its place: the old one stays\n"
        "            os.replace(old, final)\n",
        "",
        CHECKPOINTS,
        "a failed re-save of a step loses the folder it replaced",
    ),
    Mutant(
        "runtime/atomic.py",
        "            os.fsync(f.fileno())",
        "            f.fileno()",
        RUNFILES,
        "atomic write without fsync",
    ),
    Mutant(
        "runtime/atomic.py",
        "        with contextlib.suppress(FileNotFoundError):\n            os.unlink(tmp)",
        "        with contextlib.suppress(FileNotFoundError):\n            tmp.stat()",
        RUNFILES,
        "a failed atomic write leaves its temporary file",
    ),
    Mutant(
        "runtime/rundir.py",
        'write_atomic(path, "".join(line + "\\n" for line in kept))',
        'path.write_text("".join(line + "\\n" for line in kept))',
        RUNFILES,
        "metrics rewritten in place on resume (not atomic)",
    ),
    Mutant(
        "runtime/rundir.py",
        "if _line_step(line) <= resume_step]",
        "if _line_step(line) < resume_step]",
        RUNFILES,
        "resume drops the checkpoint step's own metrics line",
    ),
    Mutant(
        "runtime/rundir.py",
        "    except (ValueError, AttributeError):\n        return math.inf",
        "    except (ValueError, AttributeError):\n        return 0",
        RUNFILES,
        "a torn metrics line survives a resume",
    ),
    Mutant(
        "runtime/data.py",
        "return min(n_docs - 1, max(1, round(n_docs * val_fraction)))",
        "return min(n_docs - 1, max(0, round(n_docs * val_fraction)))",
        DATA,
        "validation split may be empty",
    ),
    Mutant(
        "runtime/data.py",
        "cut = cached.document_end(cached.n_documents - n_val - 1)",
        "cut = cached.document_end(n_val - 1)",
        DATA,
        "train/validation split point from the wrong end",
    ),
    Mutant(
        "runtime/data.py",
        "start = self.position + self.rank * self.micro_batch",
        "start = self.position",
        DATA,
        "every rank reads the same micro-batch",
    ),
    Mutant(
        "runtime/data.py",
        "return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()",
        "return rows[:, :-1].contiguous(), rows[:, :-1].contiguous()",
        DATA,
        "targets not shifted",
    ),
    Mutant(
        "runtime/data.py",
        "total = min(n_batches * batch_size, n_windows)",
        "total = n_batches * batch_size",
        DATA,
        "a short validation set wraps around",
    ),
    Mutant(
        "runtime/loop.py",
        "(loss / run.accum).backward()",
        "loss.backward()",
        RUNTIME,
        "gradient accumulation sums instead of averaging",
    ),
    Mutant(
        "runtime/optim.py",
        "return peak * (step + 1) / warmup",
        "return peak * step / warmup",
        RUNTIME,
        "warmup starts at lr 0 (off by one)",
    ),
    Mutant(
        "runtime/optim.py",
        "span = max(train.steps - 1 - warmup, 1)",
        "span = max(train.steps - warmup, 1)",
        RUNTIME,
        "cosine reaches min_lr one step after the last",
    ),
    # ------------------------------------------------------------------ loader.py
    Mutant(
        "cartspec/loader.py",
        "                if value is None:\n                    out.pop(key, None)",
        "                if value is None:\n                    out[key] = value",
        LOADER,
        "extends: null no longer removes a key",
    ),
    Mutant(
        "cartspec/loader.py",
        'base.data.pop("name", None)  # a spec\'s name is its own',
        'base.data.get("name", None)  # a spec\'s name is its own',
        LOADER,
        "the name is inherited through extends",
    ),
    Mutant(
        "cartspec/loader.py",
        "if len(chain) >= MAX_EXTENDS_DEPTH:",
        "if len(chain) > MAX_EXTENDS_DEPTH:",
        LOADER,
        "extends depth limit off by one",
    ),
    Mutant(
        "cartspec/loader.py",
        "if not part.isdigit() or int(part) >= len(node):",
        "if not part.isdigit() or int(part) > len(node):",
        LOADER,
        "--set list index one past the end",
    ),
    Mutant(
        "cartspec/loader.py",
        "if self.flow_level >= MAX_FLOW_DEPTH:",
        "if self.flow_level > MAX_FLOW_DEPTH:",
        LOADER,
        "flow nesting limit off by one",
    ),
    Mutant(
        "cartspec/loader.py",
        "                    out[key] = go(out[key], value, sub)",
        "                    out[key] = value",
        LOADER,
        "extends replaces mappings instead of merging them",
    ),
    # ------------------------------------------------------------------ cached decoding, sampled depth
    Mutant(
        "cartspec/codegen/templates/heads.py.j2",
        "mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)",
        "mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(0)",
        DECODING,
        "a prefill after cached positions masks as if the cache were empty",
    ),
    Mutant(
        "cartspec/codegen/templates/heads.py.j2",
        "    if T == 1:  # one new token sees every cached position\n        return F.scaled_dot_product_attention(q, k, v)",
        "    if T == 1:  # one new token sees every cached position\n        return F.scaled_dot_product_attention(q, k[..., :1, :], v[..., :1, :])",
        DECODING,
        "one new token sees only the first cached position",
    ),
    Mutant(
        "cartspec/codegen/templates/rotary.py.j2",
        "cos, sin = self.cos[start : start + T], self.sin[start : start + T]",
        "cos, sin = self.cos[:T], self.sin[:T]",
        DECODING,
        "RoPE ignores the cached positions' offset",
    ),
    Mutant(
        "cartspec/codegen/templates/cache.py.j2",
        "        self.length = end\n",
        "",
        DECODING,
        "the cache forgets how many positions it holds",
    ),
    Mutant(
        "cartspec/codegen/templates/cache.py.j2",
        "self.loop_rows[r] = loop_embedding(r)",
        "self.loop_rows[r] = loop_embedding(0)",
        DECODING,
        "decoding embeds every loop as the first one",
    ),
    Mutant(
        "cartspec/codegen/forward.py",
        '"    k, v = cache.anchor.extend(k, v)  # earlier positions\' K, V come from the cache",',
        '"    k, v = k, v  # earlier positions\' K, V come from the cache",',
        DECODING,
        "the anchor's K, V are not cached: new tokens cross-attend to themselves only",
    ),
    Mutant(
        "cartspec/codegen/templates/schedule.py.j2",
        "return [(r, None, r >= loops - tail) for r in range(loops)]",
        "return [(r, None, r > loops - tail) for r in range(loops)]",
        DEPTH,
        "truncated backprop keeps gradients through one loop too few",
    ),
    Mutant(
        "cartspec/codegen/templates/schedule.py.j2",
        "return plan + [(without + j, j < with_grad, True) for j in range(int(with_grad.max()))]",
        "return plan + [(j, j < with_grad, True) for j in range(int(with_grad.max()))]",
        DEPTH,
        "per-sequence loops with gradients restart the loop index at 0",
    ),
    Mutant(
        "cartspec/codegen/templates/schedule.py.j2",
        "return new if running is None else torch.where(running[:, None, None], new, old)",
        "return new",
        DEPTH,
        "a sequence past its own depth keeps looping",
    ),
    Mutant(
        "runtime/depth.py",
        "depth = int(rng.poisson(tau)) + 1",
        "depth = int(rng.poisson(tau))",
        DEPTH,
        "Huginn's draw without its + 1",
    ),
    Mutant(
        "cartspec/accounting.py",
        "return (3 * static + (3 * with_grad + without) * per_loop) / seq_len",
        "return (3 * static + 3 * (with_grad + without) * per_loop) / seq_len",
        DEPTH,
        "loops without gradients charged a backward pass",
    ),
    Mutant(
        "runtime/data.py",
        'key = hashlib.sha256(f"{corpus.signature}\\0{tokenizer.fingerprint}".encode()).digest()',
        "key = hashlib.sha256(tokenizer.fingerprint.encode()).digest()",
        DATA,
        "a changed corpus reuses its stale token cache",
    ),
    Mutant(
        "runtime/token_cache.py",
        "    if _sha256(f) != header.sha256:",
        "    if False:",
        DATA,
        "a token cache corrupted in place is read as tokens",
    ),
    Mutant(
        "runtime/corpus.py",
        "        elif not block and len(blank) == 1:",
        "        elif False:",
        DATA,
        "a .txt file's paragraphs differ from the whole-text split earlier runs trained on",
    ),
]

# What a surviving mutant is, once looked at: the note printed beside it in the table.
EXPLAINED: dict[str, str] = {}


# ----------------------------------------------------------------------------- the harness

SITECUSTOMIZE = '''\
"""Map cartspec and cartspec.runtime to the mutation scratch copy (bench/mutation.py)."""
import importlib.machinery, importlib.util, sys

_ROOTS = {{"cartspec": {cartspec!r}, "cartspec.runtime": {runtime!r}}}


class _ScratchFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in _ROOTS:
            init = _ROOTS[name] + "/__init__.py"
            return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[_ROOTS[name]])
        return None


sys.meta_path.insert(0, _ScratchFinder)
'''


def check(mutants: list[Mutant]) -> None:
    """Every mutant's old text occurs exactly once in its file, and its tests exist."""
    for i, m in enumerate(mutants, 1):
        text = (ROOT / m.file).read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"mutant {i} ({m.file}): old text found {text.count(m.old)} times")
        for t in m.tests:
            if not (ROOT / t).is_file():
                raise SystemExit(f"mutant {i}: no test file {t}")


def scratch_copy() -> Path:
    """The working tree (tracked and untracked files git does not ignore) in a temporary folder."""
    base = Path(tempfile.mkdtemp(prefix="cartspec-mutation-"))
    repo = base / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            dst = repo / os.fsdecode(name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    boot = base / "boot"
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(cartspec=str(repo / "cartspec"), runtime=str(repo / "runtime"))
    )
    return base


def run_tests(base: Path, tests: tuple[str, ...], timeout: int) -> subprocess.CompletedProcess:
    """``pytest -x`` on ``tests`` in the scratch copy, importing cartspec from there."""
    repo = base / "repo"
    env = {
        **os.environ,
        "PYTHONPATH": f"{base / 'boot'}{os.pathsep}{repo}",
        "HYPOTHESIS_PROFILE": "ci",  # derandomized: a mutant's fate reproduces
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def baseline(base: Path, mutants: list[Mutant], timeout: int) -> bool:
    """Every owning test set passes on the unmutated copy, so a failure under a mutant is the mutant's."""
    ok = True
    for tests in dict.fromkeys(m.tests for m in mutants):
        start = time.perf_counter()
        proc = run_tests(base, tests, timeout)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        print(
            f"baseline {'passed' if proc.returncode == 0 else 'FAILED'} {time.perf_counter() - start:6.1f}s  "
            f"{' '.join(tests)}  ({lines[-1] if lines else ''})",
            flush=True,
        )
        ok = ok and proc.returncode == 0
    return ok


def run_mutant(base: Path, m: Mutant, timeout: int) -> tuple[str, float, str]:
    """Apply ``m`` in the scratch copy, run its tests, restore the file: (fate, seconds, last line)."""
    repo = base / "repo"
    path = repo / m.file
    original = path.read_text()
    start = time.perf_counter()
    try:
        path.write_text(original.replace(m.old, m.new, 1))
        proc = run_tests(base, m.tests, timeout)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        last = (failed or lines or proc.stderr.strip().splitlines() or [""])[-1]
        fate = "survived" if proc.returncode == 0 else "killed"
        if proc.returncode in (4, 5):  # usage error, no tests: the harness is wrong, not the code
            fate = "error"
    except subprocess.TimeoutExpired:
        fate, last = "timeout", f"ran past {timeout} s"
    finally:
        path.write_text(original)
    return fate, time.perf_counter() - start, str(last)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="print the mutants, one a line, and exit")
    parser.add_argument("--only", default="", help="comma-separated mutant numbers (1-based)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument(
        "--baseline", action="store_true", help="first run each owning test set unmutated (must pass)"
    )
    args = parser.parse_args()

    check(MUTANTS)
    chosen = [int(i) for i in args.only.split(",") if i] or list(range(1, len(MUTANTS) + 1))
    if args.list:
        for i in chosen:
            m = MUTANTS[i - 1]
            print(f"{i:3d}  {m.file}  {m.what}  [{' '.join(Path(t).name for t in m.tests)}]")
        return 0

    base = scratch_copy()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still clean the scratch copy up
    rows, fates = [], {}
    try:
        if args.baseline and not baseline(base, [MUTANTS[i - 1] for i in chosen], args.timeout):
            print("the unmutated copy fails its own tests: no mutant can be judged")
            return 1
        for i in chosen:
            m = MUTANTS[i - 1]
            fate, seconds, last = run_mutant(base, m, args.timeout)
            fates[i] = fate
            note = f"  -- {EXPLAINED[m.what]}" if fate == "survived" and m.what in EXPLAINED else ""
            row = f"{i:3d}  {fate:8s} {seconds:6.1f}s  {m.file}  {m.what}{note}"
            if fate in ("killed", "error"):
                row += f"  ({last[:100]})"
            print(row, flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    killed = sum(f in ("killed", "timeout") for f in fates.values())
    errors = sum(f == "error" for f in fates.values())
    score = f"score: {killed}/{len(fates)} killed ({killed / len(fates):.1%})" + (
        f", {errors} harness errors" if errors else ""
    )
    print(score)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join([*rows, score]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
