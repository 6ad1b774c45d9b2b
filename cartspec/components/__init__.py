"""The registry of component kinds: each kind is declared once, with its schema, parameter and
FLOP formulas, resolved sizes, template and generated class name (see :mod:`.base`).

Importing this package registers every kind; the spec's unions, the graph, the accounting and
the code generator read them from here.
"""

from cartspec.components import (  # noqa: F401 - registers their kinds
    attention,
    halt,
    inject,
    latent,
    loop,
    lora,
    readout,
    state,
    values,
)
from cartspec.components.base import kinds, union

__all__ = ["kinds", "union"]
