"""Configs written as ``--set`` overrides: a value's one-line YAML, the id a config's grid values
give it, and the overrides that turn one resolved spec into another (no torch).

A config's id comes from its grid values (``d128_r4``; ``model.d_model`` -> ``d``,
``blocks.prelude.layers`` -> ``p``, ``blocks.core.loops`` -> ``r``, ``train.seed`` -> ``s``, else
the last path segment) and names its run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

ABBREVIATIONS = {
    "model.d_model": "d",
    "blocks.prelude.layers": "p",
    "blocks.core.loops": "r",
    "blocks.coda.layers": "c",
    "blocks.stack.layers": "l",
    "train.seed": "s",
    "train.optimizer.lr": "lr",
}
MAX_ID = 64  # ids are folder names and spec identifiers


def yaml_value(v: Any) -> str:
    """A value as one line of YAML that reads back as the same value (the right side of --set)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        plain = re.fullmatch(r"[A-Za-z_/.][A-Za-z0-9_./-]*", v) is not None
        return v if plain and _reads_back(v) else _quoted(v)
    if isinstance(v, list):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{yaml_value(str(k))}: {yaml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no YAML form for {type(v).__name__}")


def _float(v: float) -> str:
    """YAML 1.1 reads ``1e-05`` as a string: a float's exponent needs a dot in the mantissa."""
    if math.isnan(v):
        return ".nan"
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    text = repr(v)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def _quoted(text: str) -> str:
    """A YAML double-quoted string: printable ASCII as is, everything else escaped."""
    out = []
    for ch in text:
        n = ord(ch)
        if 32 <= n < 127 and ch not in '"\\':
            out.append(ch)
        elif ch in '"\\':
            out.append("\\" + ch)
        else:
            out.append(f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return '"' + "".join(out) + '"'


def _reads_back(text: str) -> bool:
    import yaml

    return yaml.safe_load(text) == text


def assignments(values: dict[str, Any]) -> list[str]:
    """``{path: value}`` as ``--set`` strings, in order."""
    return [f"{k}={yaml_value(v)}" for k, v in values.items()]


def _id_part(path: str, value: Any) -> str:
    key = ABBREVIATIONS.get(path, path.rsplit(".", 1)[-1])
    text = value if isinstance(value, str) else yaml_value(value)
    text = text.lower().replace(".", "p").replace("-", "m")
    return re.sub(r"[^a-z0-9_]", "", key.lower() + text)


def grid_id(values: dict[str, Any]) -> str:
    """``{model.d_model: 128, blocks.core.loops: 4}`` -> ``d128_r4`` (``base`` when empty)."""
    return "_".join(_id_part(k, v) for k, v in values.items()) or "base"


def config_id(point: dict[str, Any], stem: str | None = None) -> str:
    """A config's id: its grid values' id, after the entry's own stem when it has one."""
    text = grid_id(point) if stem is None else stem + (f"_{grid_id(point)}" if point else "")
    return fit_id(text, json.dumps(point, default=str))


def fit_id(text: str, salt: str) -> str:
    """Keep an id usable as a folder name and a spec identifier: at most 64 characters, the
    cut-off tail replaced by a hash of ``salt``."""
    if len(text) <= MAX_ID:
        return text
    return text[: MAX_ID - 9] + "_" + hashlib.sha256(salt.encode()).hexdigest()[:8]


def spec_change(before: dict[str, Any], after: dict[str, Any], path: str = "") -> list[str]:
    """What differs between two resolved specs, as ``dotted.path=new value`` (name and description
    left out; a mapping is shown whole where the other side is not a mapping or has another kind)."""
    if before == after:
        return []
    same_kind = (
        not isinstance(before, dict) or not isinstance(after, dict) or before.get("kind") == after.get("kind")
    )
    if isinstance(before, dict) and isinstance(after, dict) and same_kind:
        out = []
        for key in [*before, *(k for k in after if k not in before)]:
            if path == "" and key in ("name", "description"):
                continue
            sub = f"{path}.{key}" if path else key
            out += spec_change(before.get(key), after.get(key), sub)
        return out
    if isinstance(after, dict):  # another kind: show it whole, without its unset options
        after = {k: v for k, v in after.items() if v is not None}
    return [f"{path}={yaml_value(after)}"]
