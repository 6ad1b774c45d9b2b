"""Sweeps: one YAML file names many runs; they train one after another, resumably.

```yaml
name: cpu_mini                          # default: the file's stem; results go to sweeps/<name>
base: ../tiny/cart_tiny.yaml            # relative to this file
set: {train.steps: 200}                 # every config (a mapping, or a list of path=value)
grid:                                   # the cartesian product, in key order
  model.d_model: [64, 128]
  blocks.core.loops: [2, 4]
extra:
  - {parity: {match: stored}, of: d128_r4}            # a dense baseline of a grid config
  - {name: no_hc, of: d128_r4, set: {blocks.core.state_mix: null}}   # an ablation of it
  - {spec: ../dense_tiny.yaml, grid: {train.seed: [1, 2]}}           # another spec file
eval_loops: true                        # validate finished looped runs at loops 1..max(2R, 16)
```

A config's id comes from its grid values (``d128_r4``; ``model.d_model`` -> ``d``,
``blocks.prelude.layers`` -> ``p``, ``blocks.core.loops`` -> ``r``, ``train.seed`` -> ``s``, else
the last path segment) and is its run folder: ``<sweep>/runs/<id>``. Overrides apply in this
order: the sweep's ``set``, the grid values, the entry's ``grid``, the entry's ``set``. An extra
without ``spec`` starts from its ``of`` config (default ``base``: the base spec with the sweep's
``set``); an extra with ``spec`` runs that file, and ``of`` only names what the report compares
it with. A ``parity`` extra is the dense baseline of its ``of`` config (:mod:`cartspec.parity`),
written to ``<sweep>/specs/<id>.yaml``.

The runtime (torch) is imported only when something is actually trained or evaluated.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import itertools
import json
import math
import re
import shlex
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cartspec import results
from cartspec.accounting import ParamReport, account
from cartspec.errors import Problem, SpecError, UserError
from cartspec.loader import Loaded, display, read_yaml
from cartspec.resolve import Resolved, resolve, resolve_data, spec_dict, spec_sha256
from cartspec.runtime.rundir import newest_step
from cartspec.schema import IDENTIFIER, Identifier
from cartspec.validate import file_order

ABBREVIATIONS = {
    "model.d_model": "d",
    "blocks.prelude.layers": "p",
    "blocks.core.loops": "r",
    "blocks.coda.layers": "c",
    "blocks.stack.layers": "l",
    "train.seed": "s",
    "train.optimizer.lr": "lr",
}
MAX_CONFIGS = 10_000


# ----------------------------------------------------------------------------- the sweep file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_overrides(v: Any) -> Any:
    if v is None:
        return []
    if isinstance(v, dict):
        for key, value in v.items():
            if not isinstance(key, str) or not key.strip() or "=" in key:
                raise ValueError(f"key {key!r} is not a dotted.path")
            _check_plain(value, key)
        return v
    if isinstance(v, list):
        for i, item in enumerate(v):
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"item {i}: expected 'dotted.path=value', got {item!r}")
        return v
    raise ValueError("expected a mapping of dotted.path: value, or a list of 'dotted.path=value'")


def _check_grid(v: Any) -> Any:
    if isinstance(v, dict):
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{key}: expected a non-empty list of values")
            for value in values:
                _check_plain(value, key)
    return v


def _check_plain(v: Any, key: Any) -> None:
    """Values reach specs through --set: only what YAML's core schema writes back the same."""
    if isinstance(v, list):
        for x in v:
            _check_plain(x, key)
    elif isinstance(v, dict):
        for x in v.values():
            _check_plain(x, key)
    elif v is not None and not isinstance(v, bool | int | float | str):
        raise ValueError(f"{key}: {v!r} is not a plain value (quote it to make it a string)")


class ParityRef(_Strict):
    """A dense baseline at parity with the entry's ``of`` config."""

    match: Literal["stored", "effective", "flops"] = Field(..., description="What the counts match.")
    rule: Literal["nearest", "at-most", "at-least"] | None = Field(
        None, description="Default: at-most for stored, at-least for effective and flops."
    )
    vary: Literal["layers", "width"] = Field("layers", description="Search the depth or the width.")
    layers: int | None = Field(None, ge=1, le=1024, description="Depth of a width search.")


class Extra(_Strict):
    """A run outside the grid: a baseline, an ablation or another spec file."""

    name: Identifier | None = Field(None, description="The config id (default: from spec or parity).")
    spec: str | None = Field(None, min_length=1, description="A spec file, relative to the sweep file.")
    of: str | None = Field(
        None,
        pattern=IDENTIFIER,
        description="The config this is a variant or baseline of: a grid id, an earlier extra, or base.",
    )
    parity: ParityRef | None = Field(None, description="Make this the dense baseline of `of`.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="This entry's own grid.")
    set: Any = Field(default_factory=list, description="Overrides for this entry (applied last).")

    _overrides = field_validator("set", mode="before")(_check_overrides)
    _grid = field_validator("grid", mode="before")(_check_grid)


class SweepFile(_Strict):
    """A sweep: a base spec, a grid of overrides, and extra runs."""

    name: Identifier | None = Field(None, description="Default: the file's stem.")
    description: str = Field("", max_length=4096)
    base: str = Field(..., min_length=1, description="The base spec, relative to the sweep file.")
    set: Any = Field(default_factory=list, description="Overrides applied to every config.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted.path -> values.")
    extra: list[Extra] = Field(default_factory=list, description="Baselines, ablations, other specs.")
    eval_loops: bool | list[int] = Field(
        False,
        description="After training a shared-core looped run, validate it at other loop counts: "
        "true = 1..max(2R, 16) capped at the loop table; or a list of counts.",
    )

    _overrides = field_validator("set", mode="before")(_check_overrides)
    _grid = field_validator("grid", mode="before")(_check_grid)

    @field_validator("eval_loops", mode="before")
    @classmethod
    def _loop_counts(cls, v: Any) -> Any:
        counts_ok = isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
        if isinstance(v, bool) or counts_ok and v and min(v) >= 1:
            return v
        raise ValueError(f"expected true, false or a list of loop counts >= 1, got {v!r}")


def load_file(path: Path) -> tuple[SweepFile, Loaded]:
    """Read and validate a sweep file; every problem located as ``file:line:col: path: message``."""
    loaded = read_yaml(Path(path).absolute())
    try:
        return SweepFile.model_validate(loaded.data), loaded
    except ValidationError as e:
        problems = {_problem(loaded, err) for err in e.errors(include_url=False)}
    raise SpecError(sorted(problems, key=file_order))


def _problem(loaded: Loaded, err: dict[str, Any]) -> Problem:
    loc = tuple(err["loc"])
    path: list[str | int] = []
    node: Any = loaded.data
    for part in loc:  # keep the parts that are keys of the data (drop pydantic's type tags)
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            path.append(part)
            node = node[part] if isinstance(node, dict) or part < len(node) else None
        elif part == loc[-1]:
            path.append(part)
    dotted = ".".join(str(p) for p in path)
    if err["type"] == "extra_forbidden":
        owner = _model_at(tuple(p for p in path[:-1] if not isinstance(p, int)))
        names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        guess = difflib.get_close_matches(str(path[-1]), names, n=1, cutoff=0.6)
        hint = f" (did you mean '{guess[0]}'?)" if guess else f"; allowed: {', '.join(names)}"
        message = f"unknown key '{path[-1]}'{hint}"
    elif err["type"] == "missing":
        message = f"missing required key '{path[-1]}'"
    else:
        message = err["msg"][0].lower() + err["msg"][1:]
        message = message.removeprefix("value error, ")
        if not isinstance(err.get("input"), dict | list) and err["type"] != "value_error":
            message += f", got {err['input']!r}"
    return Problem(loaded.locate(tuple(path)), dotted, message)


def _model_at(keys: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = SweepFile
    for key in keys:
        found = model.model_fields.get(str(key))
        if found is None:
            return None
        inner = [c for c in _flatten(found.annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        return [x for arg in typing.get_args(annotation) for x in _flatten(arg)]
    return [annotation]


# ----------------------------------------------------------------------------- values and ids


def yaml_value(v: Any) -> str:
    """A value as one line of YAML that reads back as the same value (the right side of --set)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(v, str):
        plain = re.fullmatch(r"[A-Za-z_/.][A-Za-z0-9_./-]*", v) is not None
        return v if plain and _reads_back(v) else _quoted(v)
    if isinstance(v, list):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{yaml_value(str(k))}: {yaml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no YAML form for {type(v).__name__}")


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


def _id_part(path: str, value: Any) -> str:
    key = ABBREVIATIONS.get(path, path.rsplit(".", 1)[-1])
    text = value if isinstance(value, str) else yaml_value(value)
    text = text.lower().replace(".", "p").replace("-", "m")
    return re.sub(r"[^a-z0-9_]", "", key.lower() + text)


def grid_id(values: dict[str, Any]) -> str:
    """``{model.d_model: 128, blocks.core.loops: 4}`` -> ``d128_r4`` (``base`` when empty)."""
    return "_".join(_id_part(k, v) for k, v in values.items()) or "base"


def _fit_id(text: str, salt: str) -> str:
    """Keep ids usable as folder names and spec identifiers: at most 64 characters."""
    if len(text) <= 64:
        return text
    return text[:55] + "_" + hashlib.sha256(salt.encode()).hexdigest()[:8]


def fingerprint(resolved: Resolved) -> str:
    return spec_sha256(resolved.spec)


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


# ----------------------------------------------------------------------------- the plan


@dataclass
class Config:
    """One run of the sweep, resolved (validated, graph built, counted)."""

    id: str
    role: str  # grid | extra | parity
    spec_path: Path  # the file the runtime (or a printed command) reads
    overrides: list[str]
    grid: dict[str, Any]
    ref: str | None
    resolved: Resolved
    report: ParamReport
    at: str  # where in the sweep file it comes from
    spec_text: str | None = None  # parity: the derived spec file's content
    spec_data: dict[str, Any] | None = None  # parity: the same as data (variants start from it)
    change: str | None = None

    @property
    def looped(self) -> bool:
        return self.resolved.spec.blocks.core is not None

    @property
    def loops(self) -> int | None:
        core = self.resolved.spec.blocks.core
        return core.loops if core is not None else None

    @property
    def steps(self) -> int:
        return self.resolved.spec.train.steps

    @property
    def tokens(self) -> int:
        return self.steps * self.resolved.spec.tokens_per_step

    def command(self, run_dir: Path) -> str:
        args = ["cartspec", "train", display(self.spec_path)]
        for o in self.overrides:
            args += ["--set", o]
        args += ["--out", display(run_dir), "--resume", "auto"]
        return " ".join(shlex.quote(a) for a in args)


@dataclass
class Plan:
    name: str
    path: Path
    out_dir: Path
    configs: list[Config]
    eval_loops: bool | list[int] = False
    description: str = ""

    def run_dir(self, config: Config) -> Path:
        return self.out_dir / "runs" / config.id


class _Planner:
    """Expands a sweep file into configs; collects every problem before raising."""

    def __init__(self, sweep: SweepFile, loaded: Loaded, out_dir: Path | None):
        self.sweep, self.loaded = sweep, loaded
        self.file = loaded.files[0]
        self.name = sweep.name or self.file.stem
        self.out_dir = out_dir if out_dir is not None else Path("sweeps") / self.name
        self.problems: list[tuple[Problem, str]] = []  # (problem, config id)
        self.where: dict[str, str] = {}  # --set string -> its place in the sweep file
        self.configs: dict[str, Config] = {}
        self._base: Config | None = None

    # -- helpers

    def at(self, *path: str | int) -> str:
        return self.loaded.locate(tuple(path))

    def fail(self, at: str, path: str, message: str, config: str = "") -> None:
        self.problems.append((Problem(at, path, message), config))

    def overrides(self, value: Any, *path: str | int) -> list[str]:
        """Normalise a ``set:`` (mapping or list) to --set strings, remembering their places."""
        out = []
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, v in items:
            text = f"{key}={yaml_value(v)}" if isinstance(value, dict) else v
            self.where.setdefault(text, self.at(*path, key))
            out.append(text)
        return out

    def grid_points(self, grid: dict[str, list[Any]], *path: str | int) -> list[dict[str, Any]]:
        points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
        for key, values in grid.items():
            for i, v in enumerate(values):
                self.where.setdefault(f"{key}={yaml_value(v)}", self.at(*path, key, i))
        return points

    def spec_file(self, text: str, *path: str | int) -> Path | None:
        p = (self.file.parent / text).absolute()
        if not p.is_file():
            self.fail(self.at(*path), ".".join(map(str, path)), f"no such spec file: {display(p)}")
            return None
        return p

    def resolve_config(
        self, config_id: str, at: str, spec_path: Path, overrides: list[str], data: dict | None = None
    ) -> Resolved | None:
        """Resolve one config; its problems are re-located onto the sweep file."""
        try:
            if data is None:
                return resolve(spec_path, overrides)
            return resolve_data(data, spec_path, overrides)
        except SpecError as e:
            for p in e.problems:
                where = (
                    self.where.get(p.where[len("--set ") :], at) if p.where.startswith("--set ") else p.where
                )
                self.problems.append((Problem(where, p.path, p.message), config_id))
            return None

    def add(self, config_id: str, at: str, **kwargs: Any) -> Config | None:
        if config_id in self.configs:
            self.fail(at, "", f"config id '{config_id}' is used twice; give the entry a name:")
            return None
        resolved = kwargs.pop("resolved")
        config = Config(config_id, resolved=resolved, report=account(resolved.graph), at=at, **kwargs)
        self.configs[config_id] = config
        return config

    # -- the parts of a sweep

    def base(self) -> Config | None:
        """The base spec with the sweep's ``set`` (the ``of: base`` of extras)."""
        if self._base is None and self.base_path is not None:
            resolved = self.resolve_config("base", self.at("base"), self.base_path, self.common)
            if resolved is not None:
                self._base = Config(
                    "base", "grid", self.base_path, list(self.common), {}, None, resolved,
                    account(resolved.graph), self.at("base"),
                )  # fmt: skip
        return self._base

    def build(self) -> Plan:
        s = self.sweep
        n = math.prod(map(len, s.grid.values())) + sum(math.prod(map(len, e.grid.values())) for e in s.extra)
        if n > MAX_CONFIGS:
            raise SpecError(
                [Problem(self.at("grid"), "grid", f"{n:,} configs; at most {MAX_CONFIGS:,} (a typo?)")]
            )
        self.base_path = self.spec_file(s.base, "base")
        self.common = self.overrides(s.set, "set")
        if self.base_path is not None:
            for point in self.grid_points(s.grid, "grid"):
                config_id = _fit_id(grid_id(point), json.dumps(point, default=str))
                overrides = [*self.common, *(f"{k}={yaml_value(v)}" for k, v in point.items())]
                at = self.at("grid") if s.grid else self.at("base")
                resolved = self.resolve_config(config_id, at, self.base_path, overrides)
                if resolved is not None:
                    config = self.add(
                        config_id, at, role="grid", spec_path=self.base_path, overrides=overrides,
                        grid=point, ref=None, resolved=resolved,
                    )  # fmt: skip
                    if config_id == "base":
                        self._base = config
        for i, extra in enumerate(s.extra):
            self.extra(i, extra)
        if self.problems:
            raise SpecError(_merge(self.problems))
        if not self.configs:
            raise UserError(f"{display(self.file)}: the sweep has no configs")
        return Plan(
            self.name, self.file, self.out_dir, list(self.configs.values()), s.eval_loops, s.description
        )

    def source(self, i: int, name: str) -> Config | None:
        """The config an extra derives from or is compared with."""
        if name == "base":
            return self.base()
        if name in self.configs:
            return self.configs[name]
        known = ", ".join(list(self.configs)[:6]) + (" ..." if len(self.configs) > 6 else "")
        self.fail(
            self.at("extra", i, "of"),
            f"extra.{i}.of",
            f"no config '{name}' before this entry (have: base, {known})",
        )
        return None

    def extra(self, i: int, e: Extra) -> None:
        at = self.at("extra", i)
        if e.name == "base":
            self.fail(self.at("extra", i, "name"), f"extra.{i}.name", "'base' is reserved for the base spec")
            return
        if e.parity is not None and e.spec is not None:
            self.fail(at, f"extra.{i}", "give spec: or parity:, not both (parity derives its spec)")
            return
        if e.spec is None and e.parity is None and e.name is None:
            self.fail(at, f"extra.{i}", "an extra without spec: needs a name:")
            return
        of = self.source(i, e.of or "base") if e.of is not None or e.spec is None else None
        if of is None and (e.spec is None):
            return
        own = self.overrides(e.set, "extra", i, "set")
        points = self.grid_points(e.grid, "extra", i, "grid")

        if e.parity is not None:
            stem = e.name or _fit_id(
                f"dense_{e.parity.match}" + ("" if of.id == "base" else f"_{of.id}"), of.id
            )
            dense = self.parity(i, e, of, stem)
            if dense is None:
                return
            text, data, change = dense
            spec_path = (self.out_dir / "specs" / f"{stem}.yaml").absolute()
            for point in points:
                config_id = _fit_id(
                    stem + (f"_{grid_id(point)}" if point else ""), json.dumps(point, default=str)
                )
                overrides = [*(f"{k}={yaml_value(v)}" for k, v in point.items()), *own]
                resolved = self.resolve_config(config_id, at, spec_path, overrides, data)
                if resolved is not None:
                    self.add(
                        config_id, at, role="parity", spec_path=spec_path, overrides=overrides,
                        grid=point, ref=of.id, resolved=resolved, spec_text=text, spec_data=data,
                        change=change,
                    )  # fmt: skip
            return

        if e.spec is not None:
            spec_path = self.spec_file(e.spec, "extra", i, "spec")
            if spec_path is None:
                return
            start, data, text = list(self.common), None, None
            stem = e.name or spec_path.stem
            if not re.fullmatch(IDENTIFIER, stem):
                self.fail(at, f"extra.{i}", f"'{stem}' is not a config id; give the entry a name:")
                return
        else:
            spec_path, start, data, text, stem = (
                of.spec_path,
                list(of.overrides),
                of.spec_data,
                of.spec_text,
                e.name,
            )
        for point in points:
            config_id = _fit_id(
                stem + (f"_{grid_id(point)}" if point else ""), json.dumps(point, default=str)
            )
            overrides = [*start, *(f"{k}={yaml_value(v)}" for k, v in point.items()), *own]
            resolved = self.resolve_config(config_id, at, spec_path, overrides, data)
            if resolved is None:
                continue
            change = None
            if of is not None:
                change = "; ".join(spec_change(spec_dict(of.resolved.spec), spec_dict(resolved.spec)))
            self.add(
                config_id, at, role="extra", spec_path=spec_path, overrides=overrides,
                grid={**of.grid, **point} if of is not None and e.spec is None else point,
                ref=of.id if of is not None else None, resolved=resolved, spec_text=text,
                spec_data=data, change=change or None,
            )  # fmt: skip

    def parity(self, i: int, e: Extra, of: Config, stem: str) -> tuple[str, dict, str] | None:
        from cartspec import parity

        p = e.parity
        try:
            found = parity.find(of.resolved, p.match, p.vary, p.rule, p.layers)
        except UserError as err:
            self.fail(self.at("extra", i, "parity"), f"extra.{i}.parity", str(err), stem)
            return None
        data = dict(found.chosen.data, name=stem)
        text = found.yaml().replace(f"name: {found.name}\n", f"name: {stem}\n", 1)
        c = found.chosen
        change = f"{p.match} parity ({found.rule}): {c.shape}, {found.gap(c):+.2%}"
        return text, data, change


def _merge(found: list[tuple[Problem, str]]) -> list[Problem]:
    """One line per distinct problem, naming the first config it hit and how many more."""
    by_problem: dict[Problem, list[str]] = {}
    for problem, config in found:
        by_problem.setdefault(problem, [])
        if config and config not in by_problem[problem]:
            by_problem[problem].append(config)
    out = []
    for p, configs in by_problem.items():
        more = f" and {len(configs) - 1} more" if len(configs) > 1 else ""
        suffix = f" (config {configs[0]}{more})" if configs else ""
        out.append(Problem(p.where, p.path, p.message + suffix))
    return sorted(out, key=file_order)


def plan(path: str | Path, out_dir: Path | None = None) -> Plan:
    """Read a sweep file and resolve every config it names (no training, nothing written)."""
    sweep, loaded = load_file(Path(path))
    return _Planner(sweep, loaded, out_dir).build()


# ----------------------------------------------------------------------------- listing


def dry_run_lines(p: Plan) -> list[str]:
    """One line per config with its counts (and its status when the sweep has a database)."""
    from cartspec.report import human

    status: dict[str, str] = {}
    if results.db_path(p.out_dir).is_file():
        with results.connect(p.out_dir) as con:
            status = {r.id: r.status for r in results.rows(con)}
    width = max(len(c.id) for c in p.configs)
    spec_width = max(len(c.resolved.spec.name) for c in p.configs)
    lines = [
        f"sweep {p.name}: {len(p.configs)} configs -> {display(p.out_dir)}",
        f"{'id':<{width}}  {'role':<6}  {'spec':<{spec_width}}  {'stored':>9}  {'effective':>9}  "
        f"{'eff paper':>9}  {'GFLOPs/seq':>10}  {'steps':>6}  {'tokens':>8}  status",
    ]
    train_flops = 0.0
    for c in p.configs:
        r = c.report
        train_flops += r.flops.train_per_token * c.tokens
        lines.append(
            f"{c.id:<{width}}  {c.role:<6}  {c.resolved.spec.name:<{spec_width}}  {human(r.stored):>9}  "
            f"{human(r.effective):>9}  {human(r.effective_paper):>9}  "
            f"{r.flops.forward_per_sequence / 1e9:>10,.2f}  {c.steps:>6}  {human(c.tokens):>8}  "
            f"{status.get(c.id, 'new')}"
        )
    tokens = sum(c.tokens for c in p.configs)
    lines.append(
        f"total: {len(p.configs)} configs, {human(tokens)} training tokens, "
        f"{_flops(train_flops)} to train (3 x forward, paper convention, head excluded)"
    )
    return lines


def _flops(n: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if n >= size:
            return f"{n / size:,.1f} {unit}FLOPs"
    return f"{n:,.0f} FLOPs"


def write_derived_specs(p: Plan) -> list[Path]:
    """Write the parity configs' spec files (unchanged files are not touched)."""
    from cartspec.codegen.write import write_atomic

    written = []
    for c in p.configs:
        if c.spec_text is not None and c.spec_path not in written:
            write_atomic(c.spec_path, c.spec_text)
            written.append(c.spec_path)
    return written


def commands(p: Plan) -> list[str]:
    """One ``cartspec train ... --out ... --resume auto`` line per config (for a scheduler)."""
    return [c.command(p.run_dir(c)) for c in p.configs]


# ----------------------------------------------------------------------------- running


def loop_counts(config: Config, setting: bool | list[int]) -> list[int]:
    """The loop counts a finished run is validated at: none for dense or unshared cores."""
    core = config.resolved.spec.blocks.core
    if not setting or core is None or not core.shared:
        return []
    cap = core.loop_embedding.max_loops if core.loop_embedding is not None else None
    counts = list(range(1, max(2 * core.loops, 16) + 1)) if setting is True else sorted(set(setting))
    return [n for n in counts if n >= 1 and (cap is None or n <= cap)]


@contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """One ``cartspec sweep`` per sweep folder at a time."""
    handle = open(out_dir / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the user keeps to one process
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{out_dir}: another `cartspec sweep` is running on this folder") from None
        yield
    finally:
        handle.close()


def _row(p: Plan, c: Config, position: int) -> results.Row:
    spec, r = c.resolved.spec, c.report
    return results.Row(
        id=c.id,
        position=position,
        role=c.role,
        ref=c.ref,
        change=c.change,
        spec=spec.name,
        spec_path=display(c.spec_path),
        overrides=json.dumps(c.overrides),
        grid=json.dumps(c.grid),
        fingerprint=fingerprint(c.resolved),
        looped=int(c.looped),
        loops=c.loops,
        d_model=spec.model.d_model,
        stored=r.stored,
        effective=r.effective,
        effective_paper=r.effective_paper,
        forward_flops=r.flops.forward_per_sequence,
        steps=c.steps,
        run_dir=f"runs/{c.id}",
    )


def register(con, p: Plan) -> None:
    """Put every config in the database; refuse when a config id now means a different spec."""
    for position, c in enumerate(p.configs):
        row = _row(p, c, position)
        old = results.get(con, c.id)
        if old is None or old.status == "pending" and not p.run_dir(c).exists():
            results.put(con, row)
        elif old.fingerprint != row.fingerprint:
            raise UserError(
                f"{c.at}: config {c.id} is not the one {display(p.out_dir)} already holds "
                f"(status {old.status}); restore the sweep file or pass another --out"
            )
        else:
            results.update(con, c.id, position=position, role=c.role, ref=c.ref, change=c.change)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def run(
    p: Plan,
    device: str = "auto",
    echo: Callable[[str], None] = functools.partial(print, flush=True),
) -> tuple[int, int]:
    """Train every config not yet done, in order; returns (done, failed). Resumable at any point:
    done configs are skipped, an interrupted one continues from its newest checkpoint."""
    p.out_dir.mkdir(parents=True, exist_ok=True)
    done = failed = 0
    with _lock(p.out_dir), results.connect(p.out_dir, create=True) as con:
        results.set_meta(con, name=p.name, sweep_file=str(p.path), description=p.description)
        write_derived_specs(p)
        register(con, p)
        have = {r.id: r for r in results.rows(con)}
        todo = sum(have[c.id].status != "done" for c in p.configs)
        echo(f"sweep {p.name}: {len(p.configs)} configs, {todo} to run -> {display(p.out_dir)}")
        evaluated = set(results.loop_evals(con))
        if todo or any(loop_counts(c, p.eval_loops) and c.id not in evaluated for c in p.configs):
            from cartspec.runtime.device import pick_device

            pick_device(device)  # a wrong --device is one error, not one failed run per config
        for i, c in enumerate(p.configs, 1):
            tag = f"[{i:>{len(str(len(p.configs)))}}/{len(p.configs)}] {c.id}"
            counts = loop_counts(c, p.eval_loops)
            if have[c.id].status == "done":
                if counts and c.id not in evaluated:
                    try:
                        _evaluate(con, p, c, counts, device)
                        echo(f"{tag}  done before; evaluated at loops {counts[0]}..{counts[-1]}")
                    except Exception as e:
                        echo(f"{tag}  done before; loop evaluation failed: {_one_line(e)}")
                else:
                    echo(f"{tag}  done before; skipped")
                done += 1
                continue
            start = newest_step(p.run_dir(c))
            echo(f"{tag}  training" + (f" (resuming from step {start})" if start else ""))
            results.update(con, c.id, status="running", error=None)
            t0, before = time.perf_counter(), have[c.id].wall_s or 0.0
            try:
                summary = _train(c, p.run_dir(c), device)
                wall = before + time.perf_counter() - t0
                if counts:
                    _evaluate(con, p, c, counts, device)
            except KeyboardInterrupt:
                spent = before + time.perf_counter() - t0
                results.update(con, c.id, status="pending", error="interrupted", wall_s=spent)
                raise
            except Exception as e:
                from cartspec.runtime.loop import TrainingDiverged

                expected = isinstance(e, UserError | TrainingDiverged)
                error = _one_line(e) if expected else traceback.format_exc()
                spent = before + time.perf_counter() - t0
                results.update(con, c.id, status="failed", error=error, wall_s=spent)
                echo(f"{tag}  failed: {_one_line(e)}")
                failed += 1
                continue
            last = results.final(results.read_metrics(p.run_dir(c)))
            results.update(
                con,
                c.id,
                status="done",
                error=None,
                tokens=c.tokens,
                train_loss=last.train_loss,
                val_loss=last.val_loss,
                val_ppl=last.val_ppl,
                rho=last.rho,
                wall_s=wall,
                tokens_per_s=summary.tokens_per_s if summary.tokens_per_s > 0 else None,
            )
            val = (
                f"val loss {last.val_loss:.4f} (ppl {last.val_ppl:.2f})" if last.val_loss is not None else ""
            )
            rho = f", rho {last.rho:.4f}" if last.rho is not None else ""
            echo(f"{tag}  done: {val}{rho}, {wall - before:.1f} s")
            done += 1
    return done, failed


def _train(c: Config, run_dir: Path, device: str):
    from cartspec.runtime.loop import Options, train

    return train(c.resolved, Options(out=run_dir, resume="auto", device=device, progress=False))


def _evaluate(con, p: Plan, c: Config, counts: list[int], device: str) -> None:
    from cartspec.runtime.evaluate import evaluate_loops

    _, found = evaluate_loops(p.run_dir(c), counts, None, device)
    results.put_loop_evals(con, c.id, [(r.loops, r.val_loss, r.val_ppl) for r in found])
