"""What every component kind shares: the strict pydantic base, names, and the registry.

A *kind* is one pydantic model (``kind: mha``, ``kind: swiglu`` ...) that declares, in one
place, its spec schema, its parameter and FLOP formulas, its sizes made concrete
(``resolved``), and the template and class name the code generator uses for it. The spec's
unions are built from the registry, so adding a kind is one module, one template and its tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field

IDENTIFIER = r"^[a-z][a-z0-9_]{0,63}$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER)]


class Strict(BaseModel):
    """Base of every spec node: unknown keys are errors, values are immutable once loaded, and
    values are never coerced: in pydantic's lax mode ``loops: yes`` is R = 1, ``lr: true`` is
    1.0 and ``d_model: "64"`` is 64. An integer still reads as a float (``lr: 1``). NaN and
    infinity are refused (a NaN passes no bound, so it was reported as breaking one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Problems = list[tuple[tuple[str, ...], str]]  # (key path below the kind's own node, message)


_REGISTRY: dict[str, list[type[Strict]]] = {}


def register(family: str):
    """Class decorator: ``cls`` is a kind of ``family`` (attention, gate, ...), in declaration order."""

    def add(cls: type[Strict]) -> type[Strict]:
        _REGISTRY.setdefault(family, []).append(cls)
        return cls

    return add


def kinds(family: str) -> tuple[type[Strict], ...]:
    """Every registered kind of ``family``, in declaration order."""
    return tuple(_REGISTRY[family])


def union(classes: tuple[type[Strict], ...]) -> Any:
    """A pydantic union discriminated by ``kind`` over ``classes``."""
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007 - a runtime tuple


class ConfigEntry(BaseModel):
    """One size of the generated ``Config``: a field with its spec value, or, when the spec left
    it to a rule, a property computing it from the fields (so ``Config(d_model=...)`` stays
    consistent)."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    value: str = ""  # a field's default, as Python source
    rule: str = ""  # a derived size's expression over ``self``, as Python source
    comment: str = ""

    @property
    def derived(self) -> bool:
        return bool(self.rule)
