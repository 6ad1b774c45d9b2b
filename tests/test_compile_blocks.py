"""Compile each unique block once: ``Model.blocks()`` lists every transformer block exactly once, and
``compile_model(..., "blocks")`` compiles them in place so the loop count never recompiles, the
numbers equal eager's and the state_dict keys do not change.

Compiles run on the CPU with the aot_eager backend (inductor's C++ compile would take minutes),
counted with dynamo's CompileCounter.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from gen_helpers import (
    BYTES_CART_SETS,
    CART_TINY,
    DENSE_TINY,
    SHIPPED,
    build,
    compile_variant,
    randomize_,
    shipped,
    tokens,
)
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from cartspec.errors import SpecError
from cartspec.resolve import resolve
from cartspec.runtime import checkpoint, loop
from cartspec.runtime.generated import import_module
from cartspec.runtime.torch_compile import compile_model

STAGES = ("stack", "prelude", "core", "coda")  # where blocks live; everything else is not a block
B, T = 2, 16

SHARING = {
    "albert_prelude": ("share=[{name: albert, members: ['prelude.*']}]",),
    "share_prelude_with_coda": ("share=[{name: ends, members: [prelude.1, coda.0]}]",),
    "share_coda_with_prelude": ("share=[{name: ends, members: [coda.0, prelude.0]}]",),  # owner listed last
    "unshared": ("blocks.core.shared=false",),
    "share_unshared_core_loops": (
        "blocks.core.shared=false",
        "share=[{name: pair, members: ['core.loop[0]', 'core.loop[2]']}]",
    ),
    "prelude_and_coda_without_core": ("blocks.anchor=null", "blocks.core=null"),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def placed(model: nn.Module) -> list[nn.Module]:
    """The modules in the block stages, in stage order, a shared one as often as it is placed."""
    out = []
    for stage in STAGES:
        module = getattr(model, stage, None)
        if isinstance(module, nn.ModuleList):
            out += list(module)
        elif module is not None:  # a shared core: one block
            out.append(module)
    return out


def assert_blocks_are_each_block_once(model: nn.Module, graph) -> None:
    blocks = model.blocks()
    # each placed block, once, in order of first appearance: exactly the compiler's layer and core groups
    assert [id(b) for b in blocks] == list(dict.fromkeys(id(m) for m in placed(model)))
    assert len(blocks) == sum(g.kind in ("layer", "core") for g in graph.groups.values())
    assert getattr(model, "anchor", None) not in blocks
    # blocks and the modules outside them split the parameters: each in exactly one of them
    in_blocks = [id(p) for b in blocks for p in b.parameters()]
    outside = [id(p) for name, m in model.named_children() if name not in STAGES for p in m.parameters()]
    assert len(set(in_blocks)) == len(in_blocks)
    assert not set(in_blocks) & set(outside)
    assert set(in_blocks) | set(outside) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("spec", SHIPPED)
def test_blocks_of_every_shipped_spec_hold_each_block_once(spec):
    resolved, _, module = shipped(spec)
    assert_blocks_are_each_block_once(build(module, "meta"), resolved.graph)


@pytest.mark.parametrize("label", SHARING)
def test_blocks_list_a_module_shared_by_several_places_once(tmp_path, label):
    resolved, module = compile_variant(tmp_path, label, SHARING[label])
    model = build(module, "meta")
    assert_blocks_are_each_block_once(model, resolved.graph)
    assert len(model.blocks()) < len(placed(model)) or not resolved.spec.share


# ----------------------------------------------------------------------------- compile_model


def small_model(tmp_path, label: str, sets: tuple[str, ...] = (), spec=None) -> nn.Module:
    _, module = compile_variant(tmp_path, label, sets, **({"spec": spec} if spec else {}))
    return randomize_(build(module), seed=1)


def loss_and_grads(
    model: nn.Module, loops: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    vocab = model.config.vocab_size
    model.zero_grad(set_to_none=True)
    looping = {} if loops is None else {"loops": loops}  # a dense model has no loop API
    _, loss = model(tokens(B, T, vocab, seed=3), tokens(B, T, vocab, seed=4), **looping)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("sets", [(), ("blocks.core.checkpoint=true",)], ids=["plain", "checkpoint_loops"])
def test_block_compile_does_not_recompile_when_the_loop_count_changes(tmp_path, sets):
    model = small_model(tmp_path, "cart", sets)
    counter = CompileCounterWithBackend("aot_eager")
    assert compile_model(model, "blocks", backend=counter) is model
    loss_and_grads(model, loops=2)
    frames = counter.frame_count
    assert frames == 2  # one graph for the prelude and coda layers (one class), one for the core
    loss_and_grads(model, loops=6)
    assert counter.frame_count == frames


CASES = {
    "cart": ((), None),
    "checkpoint_loops": (("blocks.core.checkpoint=true",), None),
    "dense": ((), DENSE_TINY),
}


@pytest.mark.parametrize("label", CASES)
def test_block_compile_matches_eager_and_keeps_the_state_dict_keys(tmp_path, label):
    sets, spec = CASES[label]
    eager = small_model(tmp_path, label, sets, spec)
    model = small_model(tmp_path, label, sets, spec)
    model.load_state_dict(eager.state_dict())
    expected_loss, expected_grads = loss_and_grads(eager)

    counter = CompileCounterWithBackend("aot_eager")
    compile_model(model, "blocks", backend=counter)
    loss, grads = loss_and_grads(model)
    assert counter.frame_count > 0  # the blocks did run compiled
    assert list(model.state_dict()) == list(eager.state_dict())
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_off_returns_the_model_and_model_scope_wraps_it_whole(tmp_path):
    model = small_model(tmp_path, "cart")
    assert compile_model(model, "off") is model
    wrapped = compile_model(model, "model", backend="aot_eager")
    assert wrapped is not model and wrapped._orig_mod is model
    with pytest.raises(ValueError, match="one of off, blocks, model"):
        compile_model(model, "layers")


def test_default_mode_reaches_torch_compile_as_none(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    model = small_model(tmp_path, "cart")
    compile_model(model, "blocks")
    compile_model(model, "model", mode="max-autotune")
    assert calls[0] == {"mode": None, "backend": "inductor"}
    assert len(calls) == len(model.blocks()) + 1
    assert calls[-1] == {"mode": "max-autotune", "backend": "inductor"}


# ----------------------------------------------------------------------------- the spec's train.compile


@pytest.mark.parametrize(
    ("value", "scope"),
    [("true", "blocks"), ("false", "off"), ("off", "off"), ("blocks", "blocks"), ("model", "model")],
)
def test_train_compile_is_a_scope_and_reads_the_old_booleans(value, scope):
    """Specs from when compile was a boolean still load: true compiles the blocks, false stays eager."""
    assert resolve(CART_TINY, [f"train.compile={value}"]).spec.train.compile == scope


def test_train_compile_rejects_an_unknown_scope():
    with pytest.raises(SpecError, match="'off', 'blocks' or 'model'"):
        resolve(CART_TINY, ["train.compile=layers"])


# ----------------------------------------------------------------------------- through the runtime

TRAIN_TINY = [  # ~70k parameters on raw bytes, 4 steps
    *BYTES_CART_SETS,
    "train.micro_batch=4",
    "train.steps=4",
    "train.eval.batches=6",  # the last validation batch is short: a second shape
    "train.log_interval=1",
]


def test_training_with_compiled_blocks_follows_eager_and_saves_eager_names(tmp_path, monkeypatch):
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(loop, "compile_model", functools.partial(compile_model, backend=counter))

    def run(name: str, scope: str) -> list[float]:
        resolved = resolve(CART_TINY, [*TRAIN_TINY, f"train.compile={scope}"])
        options = loop.Options(
            out=tmp_path / name, device="cpu", cache_dir=tmp_path / "cache", progress="off"
        )
        loop.train(resolved, options)
        return [
            json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]

    eager = run("eager", "off")
    assert counter.frame_count == 0
    compiled = run("blocks", "blocks")
    assert counter.frame_count > 0  # the blocks did run compiled
    assert compiled == pytest.approx(eager, abs=1e-5)
    plain = import_module(tmp_path / "blocks" / "model.py").Model()  # eager, as eval and sample load it
    checkpoint.load_weights(checkpoint.newest_valid(tmp_path / "blocks"), plain)
