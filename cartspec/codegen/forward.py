"""The generated ``forward``, the loop step and ``loop_stats``: the model's dataflow, stage by stage."""

from __future__ import annotations

from cartspec.architecture import Architecture, Stage
from cartspec.codegen.layout import wrap


def forward_context(arch: Architecture, core: dict | None) -> dict:
    """Template context for forward: a dense stack runs its layers; a looped model its loop."""
    if core is None:
        lines = ["start = 0 if cache is None else cache.advance(idx.size(1))", _embed(arch)]
        for stage in arch.stages:  # the stack
            lines += _stage_lines(stage)
        return {"forward_lines": lines, "cache": _cache_context(arch)}
    return {**_loop_checks(arch), **_loop_body(arch, core), **_stats(arch), "cache": _cache_context(arch)}


def _embed(arch: Architecture) -> str:
    """The token embeddings, scaled when the spec says so (Huginn multiplies them by sqrt(d))."""
    if arch.model.scales_embedding:
        return "x = self.embedding(idx) * self.config.embedding_scale"
    return "x = self.embedding(idx)"


def _stage_lines(stage: Stage) -> list[str]:
    """Run a stage's layers, each with its own cache when decoding (and its value embedding),
    then the stage's output norm."""
    name = stage.name
    if stage.values is not None:
        lines = [
            f"values = self.{name}_values(idx)  # the value-embedding rows of each layer that has a table",
            f"for i, layer in enumerate(self.{name}):",
            f"    x = layer(x, None if cache is None else cache.{name}[i], start, values[i])",
        ]
    else:
        lines = [
            f"for i, layer in enumerate(self.{name}):",
            f"    x = layer(x, None if cache is None else cache.{name}[i], start)",
        ]
    return lines + ([f"x = self.{name}_norm(x)"] if stage.output_norm else [])


def _cache_context(arch: Architecture) -> dict:
    """The generated KVCache: one LayerKV per attention use that keeps keys (anchors included)."""
    lines = [
        f"self.{s.name} = [LayerKV(self.max_seq_len) for _ in range(config.{s.name}_layers)]"
        for s in arch.stages
        if s.name != "coda"
    ]
    anchor, core = arch.anchor, arch.core
    if anchor is not None and anchor.recompute == "never":
        lines.append("self.anchor = LayerKV(self.max_seq_len)  # once per position, for every loop")
    elif anchor is not None:
        lines.append(
            "self.anchor = [LayerKV(self.max_seq_len) for _ in range(loops)]  # recomputed from each loop's input"
        )
    if core is not None and not core.attention.reads_anchor:
        if core.layers == 1:
            lines.append("self.core = [LayerKV(self.max_seq_len) for _ in range(loops)]  # one per loop")
        else:
            lines.append(
                "self.core = [[LayerKV(self.max_seq_len) for _ in range(config.core_layers)] for _ in range(loops)]"
            )
    if arch.stage("coda"):
        lines.append("self.coda = [LayerKV(self.max_seq_len) for _ in range(config.coda_layers)]")
    return {
        "lines": lines,
        "looped": core is not None,
        "anchor_once": anchor is not None and anchor.recompute == "never",
        "loop_rows": core is not None and core.loop_embedding is not None,
        "decodable": arch.decodable,
    }


def _loop_checks(arch: Architecture) -> dict:
    """The ``loops`` override's bounds: an unshared core has exactly R blocks, a loop table R rows."""
    c = arch.core
    lines = []
    if c.halt is not None:
        lines += [
            "# ACT may stop once every position has halted: at inference, at the loop count it chooses",
            "halt_early = loops is None and depths is None and cache is None and not self.training",
        ]
    lines += [
        "if depths is not None:  # per-sequence loop counts: compute follows the longest",
        "    loops = int(depths.max())",
        "loops = self.config.loops if loops is None else loops",
    ]
    if not c.shared:
        lines += [
            "if loops != self.config.loops:",
            '    raise ValueError(f"an unshared core has exactly {self.config.loops} blocks; got loops={loops}")',
        ]
    elif c.loop_embedding is not None and c.loop_embedding.rows is not None:
        lines += [
            "if not 1 <= loops <= self.config.max_loops:",
            '    raise ValueError(f"loops must be in 1..{self.config.max_loops} (table rows); got {loops}")',
        ]
    else:
        lines += ["if loops < 1:", '    raise ValueError(f"loops must be at least 1; got {loops}")']
    if c.attention.reads_anchor and arch.anchor.recompute == "never":
        lines += [
            "if exit_threshold is not None and cache is None:",
            '    raise ValueError("early exit decodes token by token: pass a cache")',
        ]
    else:  # keys kept per loop: a loop skipped for one token would lack them for the next
        lines += [
            "if exit_threshold is not None:",
            '    raise ValueError("this model keeps keys per loop, so it cannot exit its loop early")',
        ]
    lines += [
        "if depths is not None and cache is not None:",
        '    raise ValueError("per-sequence depths are a training schedule: decode with one loop count")',
        "if grad_loops is not None and grad_loops < 1:",
        '    raise ValueError(f"grad_loops must be at least 1; got {grad_loops}")',
        "start = 0 if cache is None else cache.advance(idx.size(1), loops)",
    ]
    return {"loops_check": lines}


def _loop_body(arch: Architecture, core: dict) -> dict:
    c = arch.core
    cached_core = not core["cross"]  # a self-attending core keeps keys per loop
    kv_args = ", k, v" if core["cross"] else ", kv, start"
    kv_params = (
        ", k: torch.Tensor, v: torch.Tensor"
        if core["cross"]
        else f", kv: {'LayerKV' if c.layers == 1 else 'list[LayerKV]'} | None = None, start: int = 0"
    )
    block_param = "" if c.shared else "core: CoreBlock, "  # the loop's own block
    values = c.value_embedding is not None  # only a self-attending core has them
    if values:  # a list per core layer; one tensor (or None) for a one-layer core
        kv_args += ", values" if c.layers > 1 else ", value"
        kv_params += (
            ", values: list[torch.Tensor | None] | None = None"
            if c.layers > 1
            else ", value: torch.Tensor | None = None"
        )
    out = f"{'self.core' if c.shared else 'core'}(h_in{kv_args})"
    if c.lora is not None:
        out = c.lora.adapt(out)
    step_body = c.gate.step(out) if c.gate is not None else out
    reads = [v for v in ("h_prev", "e", "r") if any(v in p.reads for p in (c.gate, c.lora) if p is not None)]
    step_args = "".join(f"{v}, " for v in reads)  # what the step reads besides its input
    step_params = "".join(f"{v}: {'int | torch.Tensor' if v == 'r' else 'torch.Tensor'}, " for v in reads)
    step_doc = c.gate.step_doc() if c.gate is not None else "h = core(h_in)"

    lines = [_embed(arch)]
    prelude = arch.stage("prelude")
    if prelude:
        lines += _stage_lines(prelude)
    lines.append("e = x  # the context anchor: the final prelude output" if prelude else "e = x")
    anchor = arch.anchor
    if anchor and anchor.recompute == "never":
        source = "e" if anchor.from_ == "prelude" or not prelude else "embedded"
        if source == "embedded":
            lines.insert(1, "embedded = x")
        lines += [
            f"k, v = self.anchor({source})  # K, V computed once and reused by every loop",
            "if cache is not None:",
            "    k, v = cache.anchor.extend(k, v)  # earlier positions' K, V come from the cache",
        ]
    h0 = c.init_state.expression()
    if h0 != "e":
        lines.append(f"h0 = {h0}  # {c.init_state.doc()}")
        h0 = "h0"
    if c.state_mix is not None:
        lines.append(f"states = [{h0}] * {c.state_mix.taps}  # the blend's buffer starts as copies of {h0}")
    else:
        lines.append(f"h = {h0}")
    if c.halt is not None:
        lines += [
            "h_out = torch.zeros_like(e)  # the halting-weighted sum of the states: what the coda reads",
            "spent = torch.zeros(e.shape[:-1], dtype=e.dtype, device=e.device)  # halting mass per position",
            "halted = torch.zeros(e.shape[:-1], dtype=torch.bool, device=e.device)",
        ]
    body = ["h_prev = states[0]" if c.state_mix is not None else "h_prev = h"]
    h_prev = "self.state_mix(states)" if c.state_mix is not None else "h"
    if c.loop_embedding is not None:
        body += [  # decoding keeps each loop's embedding in the cache: it does not change from token to token
            "r_embedding = (",
            "    self.loop_embedding(r) if cache is None else cache.loop_row(r, self.loop_embedding)",
            ")",
        ]
    h_in = f"{h_prev} + r_embedding" if c.loop_embedding is not None else h_prev
    if c.inject is not None:
        h_in = c.inject.read(h_in, "e")
    body.append(f"h_in = {h_in}")
    if core["unfrozen"]:
        body += [
            "k, v = self.anchor(h_in)  # unfrozen: K, V recomputed from each loop's input",
            "if cache is not None:",
            "    k, v = cache.anchor[r].extend(k, v)",
        ]
    own = "" if c.shared else "self.core[r], "
    if values:
        lines.append("core_values = self.core_values(idx)  # looked up once, read by every loop")
    if cached_core:
        block = [] if c.shared else ["self.core[r]"]
        passed = ["core_values" if c.layers > 1 else "core_values[0]"] if values else []
        checkpointed = [*block, *reads, "h_in", *(["None", "0"] if values else []), *passed]
        cached = [*block, *reads, "h_in", "None if cache is None else cache.core[r]", "start", *passed]
        indent = 20  # forward's body, the loop, the grad context, the branch
        body += [
            "if self.checkpoint_loops and torch.is_grad_enabled() and cache is None:",
            *(
                f"    {line}"
                for line in wrap(
                    indent, "h = checkpoint(", ["self.loop_step", *checkpointed, "use_reentrant=False"], ")"
                )
            ),
            "else:",
            *(f"    {line}" for line in wrap(indent, "h = self.loop_step(", cached, ")")),
        ]
    else:
        body += [
            "if self.checkpoint_loops and torch.is_grad_enabled():",
            f"    h = checkpoint(self.loop_step, {own}{step_args}h_in, k, v, use_reentrant=False)",
            "else:",
            f"    h = self.loop_step({own}{step_args}h_in, k, v)",
        ]
    if c.state_mix is not None:
        body += [
            "shifted = [h, *states[:-1]]  # newest first",
            "states = [hold(running, new, old) for new, old in zip(shifted, states, strict=True)]",
        ]
    else:
        body.append("h = hold(running, h, h_prev)")
    if c.halt is not None:
        newest = "states[0]" if c.state_mix is not None else "h"
        body += [
            f"weight, spent, halted = self.halt({newest}, spent, halted, running)",
            f"h_out = h_out + weight * {newest}",
            "if halt_early and bool(halted.all()):",
            "    break  # every position has halted: later loops would add nothing to h_out",
        ]
    body += [
        "if exit_threshold is not None and (h - h_prev).norm() <= exit_threshold * h_prev.norm():",
        "    loops = r + 1  # the state has settled: later loops would barely move it",
        "    break",
    ]
    lines += [
        "grad = torch.is_grad_enabled()",
        "for r, running, with_grad in loop_plan(loops, grad_loops, depths):",
        "    with torch.set_grad_enabled(grad and with_grad):",
        *(f"        {line}" for line in body),
        "if cache is not None:",
        "    cache.loops_used.append(loops)",
        "x = h_out" if c.halt is not None else ("x = states[0]" if c.state_mix is not None else "x = h"),
    ]
    if c.out_norm:
        lines.append("x = self.core_out_norm(x)")
    if c.readout is not None:
        lines.append("x = self.readout(x)  # the last loop state read out for the coda")
    coda = arch.stage("coda")
    if coda:
        lines += _stage_lines(coda)
    return {
        "forward_lines": lines,
        "step_def": wrap(
            4,
            "def loop_step(",
            ["self", *f"{block_param}{step_params}h_in: torch.Tensor{kv_params}".split(", ")],
            ") -> torch.Tensor:",
        ),
        "step_doc": step_doc,
        "step_body": step_body,
    }


def _stats(arch: Architecture) -> dict:
    """``loop_stats()``: what the loop parts report (rho, the blend's weights)."""
    stats = [entry for part in arch.loop_parts() for entry in part.stats()]
    doc = (
        " and ".join(what for _, _, what in stats) + "."
        if stats
        else "This loop has no gate or blend to report."
    )
    return {
        "stats_doc": doc,
        "stats_lines": wrap(8, "return {", [f'"{key}": {expr}' for key, expr, _ in stats], "}"),
    }
