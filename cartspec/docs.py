"""The spec-language reference, generated from the schema so it cannot drift from it.

Every key of a spec, as a dotted path, with its type, default and meaning, read off the pydantic
models in :mod:`cartspec.schema` (their fields, bounds and descriptions). Members of a
discriminated union (``blocks.core.gate`` with ``kind: lti`` or ``kind: residual``) are listed
per kind. The README carries the rendered table between two markers:

    python -m cartspec.docs            # rewrite the block in README.md in place
    python -m cartspec.docs --check    # exit 1 if README.md's block is out of date
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cartspec.schema import IDENTIFIER, Spec

START = "<!-- spec-reference:start -->"
END = "<!-- spec-reference:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"

INTRO = (
    "Generated from `cartspec/schema.py` by `python -m cartspec.docs`; do not edit by hand. "
    "A key marked *(kind)* exists only where its mapping has that `kind`."
)
EXTENDS = (
    "Another spec file (a regular `.yaml`/`.yml` file), relative to this one or absolute, that this "
    "spec is laid over: mappings merge key by key, "
    "lists and scalars replace, `null` removes a key (its default applies again). "
    "The name is never inherited; `--set` cannot change `extends`."
)


@dataclass(frozen=True)
class Row:
    key: str
    kind: str | None  # the union member's kind this key belongs to, if any
    type: str
    default: str
    meaning: str


@dataclass(frozen=True)
class Shape:
    """What a field's annotation holds, with Optional, Annotated and unions taken apart."""

    nullable: bool
    models: tuple[type[BaseModel], ...]  # several: a union selected by ``kind``
    listed: bool  # a list of ``models``
    scalar: Any  # the annotation when it holds no model
    alternatives: tuple[tuple[Any, FieldInfo | None], ...] = ()  # a union of scalars, each with its bounds


def spec_reference_markdown() -> str:
    """The reference as a markdown table (intro line included), ending in a newline."""
    rows = list(_rows(Spec, ""))
    at_name = next(i for i, r in enumerate(rows) if r.key == "name") + 1
    rows.insert(at_name, Row("extends", None, "string (a file path)", "none", EXTENDS))
    lines = [INTRO, "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for r in rows:
        key = f"`{r.key}`" + (f" *({r.kind})*" if r.kind else "")
        lines.append(f"| {key} | {r.type} | {r.default} | {_escape(r.meaning)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- walking the schema


def _rows(model: type[BaseModel], prefix: str, kind: str | None = None):
    fields = list(model.model_fields.items())
    done: set[str] = set()
    for name, field in fields:
        if name in done:
            continue
        shape = _shape(field.annotation)
        # siblings of one model type (blocks.stack, .prelude, .coda) share one set of child rows
        siblings = [
            (n, f) for n, f in fields if shape.models and not shape.listed and _shape(f.annotation) == shape
        ] or [(name, field)]
        for n, f in siblings:
            done.add(n)
            yield _row(model, prefix + _key(n, f), f, kind)
        if not shape.models:
            continue
        keys = [_key(n, f) for n, f in siblings]
        base = prefix + (keys[0] if len(keys) == 1 else "{" + ",".join(keys) + "}")
        base += "[]." if shape.listed else "."
        if len(shape.models) == 1:
            yield from _rows(shape.models[0], base, kind)
        else:
            for member in shape.models:
                yield from _rows(member, base, _tag(member))


def _row(owner: type[BaseModel], key: str, field: FieldInfo, kind: str | None) -> Row:
    shape = _shape(field.annotation)
    meaning = field.description or ""
    tag = key.endswith(".kind") and typing.get_args(field.annotation) == (kind,)
    if tag:  # the tag of a union member (not a nested mapping's own kind): say what the kind is
        meaning = _doc(owner) + (f" {meaning}" if meaning else "")
        return Row(key, kind, f"`{kind}`", "required", meaning)
    if not meaning and key.endswith(".kind"):  # a kind with one choice: what the mapping is
        meaning = _doc(owner)
    if not meaning and len(shape.models) == 1:
        meaning = _doc(shape.models[0])
    return Row(key, kind, _type(field, shape), _default(field), meaning)


def _key(name: str, field: FieldInfo) -> str:
    return field.alias or name


def _shape(annotation: Any) -> Shape:
    nullable, models, listed, scalar = False, [], False, annotation
    alternatives: list[tuple[Any, FieldInfo | None]] = []
    pending = [annotation]
    while pending:
        a = pending.pop(0)
        origin = typing.get_origin(a)
        if origin is typing.Annotated:
            inner, *meta = typing.get_args(a)
            bounds = next((m for m in meta if isinstance(m, FieldInfo)), None)
            if bounds is not None and typing.get_origin(inner) is None and not _is_model(inner):
                scalar = inner
                alternatives.append((inner, bounds))
                continue
            pending.insert(0, inner)
        elif origin in (typing.Union, types.UnionType):
            pending[:0] = list(typing.get_args(a))
        elif a is type(None):
            nullable = True
        elif origin is list and _is_model(typing.get_args(a)[0]):
            listed = True
            pending.insert(0, typing.get_args(a)[0])
        elif _is_model(a):
            models.append(a)
        else:
            scalar = a
            alternatives.append((a, None))
    return Shape(nullable, tuple(models), listed, None if models else scalar, tuple(alternatives))


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def _tag(member: type[BaseModel]) -> str:
    return typing.get_args(member.model_fields["kind"].annotation)[0]


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


# ----------------------------------------------------------------------------- rendering


def _type(field: FieldInfo, shape: Shape) -> str:
    if shape.models and len(shape.models) > 1:
        text = "mapping with `kind`: " + ", ".join(f"`{_tag(m)}`" for m in shape.models)
    elif shape.models:
        text = "list of mappings" if shape.listed else "mapping"
    elif len(shape.alternatives) > 1:  # e.g. a number or `sqrt_d`
        text = " or ".join(_scalar(a, bounds or field) for a, bounds in reversed(shape.alternatives))
    else:
        text = _scalar(shape.scalar, field)
    return text + (" or `null`" if shape.nullable else "")


def _scalar(a: Any, field: FieldInfo) -> str:
    origin = typing.get_origin(a)
    if origin is Literal:
        values = [_value(v) for v in typing.get_args(a)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin is tuple:
        return "[" + ", ".join(_scalar(x, FieldInfo()) for x in typing.get_args(a)) + "]"
    if origin is list:
        (item,) = typing.get_args(a)
        return "list of " + _scalar(item, FieldInfo()) + "s" + _length(field, "items")
    if a is bool:
        return "boolean"
    if a is int:
        return "integer" + _bounds(field)
    if a is float:
        return "number" + _bounds(field)
    if a is str:
        if any(getattr(m, "pattern", None) == IDENTIFIER for m in field.metadata):
            return "name: `a-z`, `0-9`, `_`, a letter first, at most 64"
        return "string" + _length(field, "characters")
    return getattr(a, "__name__", str(a))


def _bounds(field: FieldInfo) -> str:
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = f"[{_number(m.ge)}"
        elif isinstance(m, at.Gt):
            lo = f"({_number(m.gt)}"
        elif isinstance(m, at.Le):
            hi = f"{_number(m.le)}]"
        elif isinstance(m, at.Lt):
            hi = f"{_number(m.lt)})"
    if lo and hi:
        return f" in {lo}, {hi}"
    if lo:
        return (" ≥ " if lo[0] == "[" else " > ") + lo[1:]
    if hi:
        return (" ≤ " if hi[-1] == "]" else " < ") + hi[:-1]
    return ""


def _length(field: FieldInfo, unit: str) -> str:
    lo = next((m.min_length for m in field.metadata if isinstance(m, at.MinLen)), None)
    hi = next((m.max_length for m in field.metadata if isinstance(m, at.MaxLen)), None)
    if lo and hi:
        return f" ({lo} to {_number(hi)} {unit})"
    if lo:
        return f" (at least {lo} {unit})"
    return f" (at most {_number(hi)} {unit})" if hi else ""


def _number(x: float) -> str:
    """Bounds as people write them: 2^20, 10^9, 2^63 − 1; others as they are."""
    if x == int(x) and x >= 10_000:
        n = int(x)
        if n & (n - 1) == 0:
            return f"2^{n.bit_length() - 1}"
        if (n + 1) & n == 0:
            return f"2^{n.bit_length()} − 1"
        if str(n).rstrip("0") == "1":
            return f"10^{len(str(n)) - 1}"
    return str(int(x)) if x == int(x) and isinstance(x, int) else str(x)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "`{}`" if isinstance(value, BaseModel) else _value(value)
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def _value(v: Any) -> str:
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, list | tuple):
        return "`[" + ", ".join(str(x) for x in v) + "]`"
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    return f"`{v}`"


def _escape(text: str) -> str:
    """Table-cell safe: pipes split cells, ``*`` starts emphasis, ``<x>`` reads as an HTML tag."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")


# ----------------------------------------------------------------------------- the README block


def with_reference(readme: str) -> str:
    """``readme`` with the block between the markers replaced by the current reference."""
    if START not in readme or END not in readme:
        raise ValueError(f"README has no {START} ... {END} block")
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{spec_reference_markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cartspec.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=README, help="the file holding the block")
    parser.add_argument("--check", action="store_true", help="exit 1 if the block is out of date")
    args = parser.parse_args(argv)
    if not args.readme.exists():
        args.readme.write_text(f"{START}\n{END}\n")
    current = args.readme.read_text()
    try:
        wanted = with_reference(current)
    except ValueError as e:
        print(f"error: {args.readme}: {e}", file=sys.stderr)
        return 2
    if args.check:
        if wanted != current:
            print(
                f"{args.readme}: spec reference is out of date; run python -m cartspec.docs", file=sys.stderr
            )
            return 1
        return 0
    if wanted != current:
        args.readme.write_text(wanted)
        print(f"updated the spec reference in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
