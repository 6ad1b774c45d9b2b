"""Compile each unique block once: ``Model.blocks()`` lists every transformer block exactly once."""

from __future__ import annotations

import pytest
from gen_helpers import SHIPPED, build, compile_variant, shipped
from torch import nn

STAGES = ("stack", "prelude", "core", "coda")  # where blocks live; everything else is not a block

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
