"""torch.compile a generated model at the scope the spec or the command line asks for.

``blocks`` (the default choice when compiling) compiles each of ``model.blocks()`` in place: a
looped model runs the same core block R times, so the compiled graph is the block's, compiled
once whatever R is. Compile time does not grow with the loop count, evaluation at other loop
counts reuses the same code instead of recompiling, and the loop itself stays plain Python.
``model`` compiles the whole forward as one graph with the loops unrolled into it: more room for
fusion across stages, but a compile per loop count and a graph R blocks long. ``off`` is eager.

In place means ``nn.Module.compile``: the blocks keep their class, so parameter names, the
state_dict and checkpoints are the same as eager's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SCOPES = ("off", "blocks", "model")


def compile_model(
    model: nn.Module, scope: str, mode: str = "default", backend: str | Callable = "inductor"
) -> nn.Module:
    """``model`` compiled at ``scope`` (off, blocks or model) with torch.compile's ``mode`` and ``backend``
    (a name, or a dynamo backend such as a test's frame counter). Run the returned module: for off
    and blocks that is ``model`` itself."""
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    options = {"mode": None if mode == "default" else mode, "backend": backend}
    if scope == "off":
        return model
    if scope == "model":
        return torch.compile(model, **options)
    blocks = model.blocks()
    # every compiled module shares one code object (nn.Module._call_impl), so all block classes
    # share dynamo's recompile limit: give each class the default's room (train, eval, shapes)
    classes = len({type(block) for block in blocks})
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 8 * classes)
    for block in blocks:
        block.compile(**options)
    return model
