"""Turn loaded YAML data into a pydantic model (a :class:`Spec`, a sweep file), reporting every
problem at its place: one translation of pydantic's errors, so every file the user writes gets the
same ``file:line:col: path: message`` lines ("did you mean", unknown kind, missing key)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cartspec.errors import Problem, SpecError
from cartspec.loader import Loaded, Path_
from cartspec.schema import IDENTIFIER, Spec

Model = TypeVar("Model", bound=BaseModel)


def validate(loaded: Loaded) -> Spec:
    """Validate spec data; on failure raise one SpecError holding every problem, located."""
    return validate_as(Spec, loaded)


def validate_as(root: type[Model], loaded: Loaded) -> Model:
    """Validate ``loaded`` as ``root``; on failure raise one SpecError holding every problem."""
    try:
        return root.model_validate(loaded.data)
    except ValidationError as e:
        problems = problems_from(e, loaded, root)
    raise SpecError(problems)


def problems_from(error: ValidationError, loaded: Loaded, root: type[BaseModel]) -> list[Problem]:
    """pydantic's errors for data validated as ``root``, located in its file, in file order."""
    found = {_problem(loaded, err, root) for err in error.errors(include_url=False)}
    return sorted(found, key=file_order)


def file_order(p: Problem) -> tuple:
    """Sort key: file, then line, then column (``--set`` problems sort by their text)."""
    file, _, rest = p.where.partition(":")
    line, _, col = rest.partition(":")
    return (file, int(line) if line.isdigit() else 0, int(col) if col.isdigit() else 0, p.path)


def _problem(loaded: Loaded, err: dict[str, Any], root: type[BaseModel]) -> Problem:
    path, model = _data_path(loaded.data, err["loc"], root)
    dotted = ".".join(str(p) for p in path)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        fields = _field_names(model) if model else []
        guess = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        hint = (
            f" (did you mean '{guess[0]}'?)"
            if guess
            else (f"; allowed: {', '.join(fields)}" if fields else "")
        )
        message = f"unknown key {key!r}{hint}"
    elif kind == "missing" and isinstance(path[-1], int):  # a tuple given too few items
        path = path[:-1]  # one problem for the list, not one per missing index
        dotted = ".".join(str(p) for p in path)
        given = err["input"]
        message = f"too few items: got {len(given) if isinstance(given, list | tuple) else given!r}"
    elif kind == "missing":
        message = f"missing required key '{path[-1]}'"
    elif kind in ("int_type", "float_type", "bool_type", "string_type") and isinstance(err["input"], bool):
        message = f"expected {_TYPE_WORDS[kind]}, got {str(err['input']).lower()} (YAML reads yes/no/on/off as booleans)"
    elif kind == "finite_number":
        message = f"expected a finite number, got {err['input']!r}"
    elif kind == "union_tag_invalid":
        path = (*path, "kind")  # point at the kind itself, not at the mapping that holds it
        dotted += ".kind"
        message = f"unknown kind {err['input'].get('kind')!r}; expected one of {err['ctx']['expected_tags']}"
    elif kind == "string_pattern_mismatch" and err["ctx"].get("pattern") == IDENTIFIER:
        message = f"{err['input']!r} is not a name: use a-z, 0-9 and _, starting with a letter (at most 64)"
    elif kind == "union_tag_not_found":
        kinds = _kinds(model, str(path[-1])) if model else []
        message = f"missing 'kind'; expected one of {', '.join(repr(k) for k in kinds)}"
    else:
        message = err["msg"][0].lower() + err["msg"][1:]
        message = message.removeprefix("value error, ")
        if kind in {
            "literal_error",
            "string_pattern_mismatch",
            "int_parsing",
            "float_parsing",
            "bool_parsing",
            "int_type",
            "int_from_float",
            "float_type",
            "string_type",
        }:
            message += f", got {err['input']!r}" if not isinstance(err["input"], dict | list) else ""
    return Problem(loaded.locate(path), dotted, message)


_TYPE_WORDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _data_path(data: Any, loc: tuple, root: type[BaseModel]) -> tuple[Path_, type[BaseModel] | None]:
    """Map a pydantic error location onto the data's own keys (dropping union tags), and find
    the model that owns the last key (for "did you mean")."""
    path: list[str | int] = []
    node: Any = data
    model: type[BaseModel] | None = root
    owner: type[BaseModel] | None = root
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            owner = model
            model = _field_model(model, str(part), node[part]) if model else None
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif last or isinstance(part, int):
            owner = model
            path.append(part)
        # else: a union tag or a wrapper name in pydantic's location: not a key of the data
    return tuple(path), owner


def _field_model(model: type[BaseModel], key: str, value: Any) -> type[BaseModel] | None:
    """The model that validates ``value`` under ``model.key`` (following unions by kind)."""
    field = next((f for n, f in model.model_fields.items() if key in (n, f.alias)), None)
    if field is None:
        return None
    candidates = [c for c in _flatten(field.annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
    if len(candidates) > 1 and isinstance(value, dict):
        kind = value.get("kind")
        for c in candidates:
            tag = c.model_fields.get("kind")
            if tag is not None and kind in typing.get_args(tag.annotation):
                return c
        return None
    return candidates[0] if candidates else None


def _kinds(model: type[BaseModel], key: str) -> list[str]:
    """The ``kind`` tags a discriminated union under ``model.key`` accepts, in schema order."""
    field = next((f for n, f in model.model_fields.items() if key in (n, f.alias)), None)
    if field is None:
        return []
    tags = []
    for c in _flatten(field.annotation):
        tag = c.model_fields.get("kind") if isinstance(c, type) and issubclass(c, BaseModel) else None
        if tag is not None:
            tags.extend(typing.get_args(tag.annotation))
    return tags


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list):
        return [x for arg in typing.get_args(annotation) for x in _flatten(arg)]
    return [annotation]


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]
