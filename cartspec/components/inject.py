"""What each loop reads besides its state (``blocks.core.inject``).

CART's loop sees the prelude output only through its anchor's K, V. The other looped LMs
re-inject e into every loop's input, each in its own way; an inject kind says how, as the
expression the generated loop computes from the state h (after the state mix and the loop
signal) and e. Its weights, if any, run once per loop, so they count R times in the effective
parameters and FLOPs (unlike the CART paper's loop control).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from cartspec.components.base import register
from cartspec.components.loop import LoopPart


class Inject(LoopPart):
    """What every inject kind declares besides a loop part's."""

    loop_control: ClassVar[bool] = False

    def read(self, h: str, e: str) -> str:
        """The loop body's input, as an expression over the state ``h`` and ``e``."""
        raise NotImplementedError

    def doc(self) -> str:
        raise NotImplementedError


@register("inject")
class Add(Inject):
    """h_in = h + e: the prelude output added to every loop's input."""

    kind: Literal["add"]

    def read(self, h: str, e: str) -> str:
        return f"{h} + {e}"

    def doc(self) -> str:
        return "h + e"
