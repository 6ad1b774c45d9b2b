"""A sweep's plan: every config its file names, resolved before anything trains (no torch).

Overrides apply in this order: the sweep's ``set``, the grid values, the entry's ``grid``, the
entry's ``set``. An extra without ``spec`` starts from its ``of`` config (default ``base``: the
base spec with the sweep's ``set``); an extra with ``spec`` runs that file, and ``of`` only names
what the report compares it with. A ``parity`` extra is the dense baseline of its ``of`` config,
written to ``<sweep>/specs/<id>.yaml``. Each config trains in ``<sweep>/runs/<id>``.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cartspec.accounting import ParamReport
from cartspec.console import human
from cartspec.errors import Problem, SpecError, UserError
from cartspec.experiments import parity, seeds, store
from cartspec.experiments.overrides import assignments, config_id, fit_id, spec_change, yaml_value
from cartspec.experiments.sweepfile import Extra, SweepFile, load_sweep_file
from cartspec.loader import Loaded, display
from cartspec.resolve import Resolved, resolve, resolve_data, spec_dict
from cartspec.schema import IDENTIFIER
from cartspec.validate import file_order

MAX_CONFIGS = 10_000


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
    at: str  # where in the sweep file it comes from
    spec_text: str | None = None  # parity: the derived spec file's content
    spec_data: dict[str, Any] | None = None  # parity: the same as data (variants start from it)
    change: str | None = None

    @property
    def report(self) -> ParamReport:
        return self.resolved.params

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
    claims: list[dict[str, Any]] = field(default_factory=list)

    def run_dir(self, config: Config) -> Path:
        return self.out_dir / "runs" / config.id


def plan_sweep(path: str | Path, out_dir: Path | None = None) -> Plan:
    """Read a sweep file and resolve every config it names (no training, nothing written)."""
    sweep, loaded = load_sweep_file(Path(path))
    return _Planner(sweep, loaded, out_dir).build()


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
        self.base_path: Path | None = None
        self.common: list[str] = []  # the sweep's own set:
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
        self, config: str, at: str, spec_path: Path, overrides: list[str], data: dict | None = None
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
                self.problems.append((Problem(where, p.path, p.message), config))
            return None

    def add(self, config: Config) -> Config | None:
        if config.id in self.configs:
            self.fail(config.at, "", f"config id '{config.id}' is used twice; give the entry a name:")
            return None
        self.configs[config.id] = config
        return config

    # -- the parts of a sweep

    def build(self) -> Plan:
        s = self.sweep
        self.check_size()
        self.base_path = self.spec_file(s.base, "base")
        self.common = self.overrides(s.set, "set")
        if self.base_path is not None:
            self.grid()
        for i, extra in enumerate(s.extra):
            self.extra(i, extra)
        if not self.problems:
            self.claims()
        if self.problems:
            raise SpecError(_merge(self.problems))
        if not self.configs:
            raise UserError(f"{display(self.file)}: the sweep has no configs")
        claims = [c.model_dump() for c in s.claims]
        configs = list(self.configs.values())
        return Plan(self.name, self.file, self.out_dir, configs, s.eval_loops, s.description, claims)

    def claims(self) -> None:
        """Every group a claim names must be a group of this sweep's configs."""
        labels = {seeds.label(c.id, c.grid) for c in self.configs.values()}
        for i, claim in enumerate(self.sweep.claims):
            for key in ("variant", "base"):
                name = getattr(claim, key)
                if name is not None and name not in labels:
                    known = ", ".join(sorted(labels))
                    message = f"no group {name!r} in this sweep (groups: {known})"
                    self.fail(self.at("claims", i, key), f"claims.{i}.{key}", message)
            if claim.base is None and claim.measure != "loop_peak":
                message = f"measure {claim.measure} compares two groups: name a base"
                self.fail(self.at("claims", i), f"claims.{i}.base", message)

    def check_size(self) -> None:
        """Refuse a grid too large to plan before resolving any of it."""
        s = self.sweep
        n = math.prod(map(len, s.grid.values())) + sum(math.prod(map(len, e.grid.values())) for e in s.extra)
        if n > MAX_CONFIGS:
            raise SpecError(
                [Problem(self.at("grid"), "grid", f"{n:,} configs; at most {MAX_CONFIGS:,} (a typo?)")]
            )

    def grid(self) -> None:
        """One config per point of the sweep's grid (``base`` when the grid is empty)."""
        at = self.at("grid") if self.sweep.grid else self.at("base")
        for point in self.grid_points(self.sweep.grid, "grid"):
            name = config_id(point)
            overrides = [*self.common, *assignments(point)]
            resolved = self.resolve_config(name, at, self.base_path, overrides)
            if resolved is not None:
                config = self.add(Config(name, "grid", self.base_path, overrides, point, None, resolved, at))
                if name == "base":
                    self._base = config

    def base(self) -> Config | None:
        """The base spec with the sweep's ``set`` (the ``of: base`` of extras)."""
        if self._base is None and self.base_path is not None:
            at = self.at("base")
            resolved = self.resolve_config("base", at, self.base_path, self.common)
            if resolved is not None:
                self._base = Config("base", "grid", self.base_path, list(self.common), {}, None, resolved, at)
        return self._base

    def source(self, i: int, name: str) -> Config | None:
        """The config an extra derives from or is compared with."""
        if name == "base":
            return self.base()
        if name in self.configs:
            return self.configs[name]
        names = ["base", *(n for n in self.configs if n != "base")]  # a sweep without a grid has only base
        known = ", ".join(names[:7]) + (" ..." if len(names) > 7 else "")
        self.fail(
            self.at("extra", i, "of"),
            f"extra.{i}.of",
            f"no config '{name}' before this entry (have: {known})",
        )
        return None

    def extra(self, i: int, e: Extra) -> None:
        """A baseline, an ablation or another spec file: one config per point of its own grid."""
        if not self.extra_is_whole(i, e):
            return
        of = self.source(i, e.of or "base") if e.of is not None or e.spec is None else None
        if of is None and e.spec is None:
            return
        own = self.overrides(e.set, "extra", i, "set")
        points = self.grid_points(e.grid, "extra", i, "grid")
        if e.parity is not None:
            self.baseline(i, e, of, own, points)
        else:
            self.variant(i, e, of, own, points)

    def extra_is_whole(self, i: int, e: Extra) -> bool:
        """Entries the schema cannot refuse alone: a reserved name, or a missing or doubled source."""
        at = self.at("extra", i)
        if e.name == "base":
            self.fail(self.at("extra", i, "name"), f"extra.{i}.name", "'base' is reserved for the base spec")
        elif e.parity is not None and e.spec is not None:
            self.fail(at, f"extra.{i}", "give spec: or parity:, not both (parity derives its spec)")
        elif e.spec is None and e.parity is None and e.name is None:
            self.fail(at, f"extra.{i}", "an extra without spec: needs a name:")
        else:
            return True
        return False

    def baseline(self, i: int, e: Extra, of: Config, own: list[str], points: list[dict[str, Any]]) -> None:
        """The dense baseline of ``of`` at parity: one derived spec, one config per grid point."""
        at = self.at("extra", i)
        suffix = "" if of.id == "base" else f"_{of.id}"
        stem = e.name or fit_id(f"dense_{e.parity.match}{suffix}", of.id)
        dense = self.parity(i, e, of, stem)
        if dense is None:
            return
        text, data, change = dense
        spec_path = (self.out_dir / "specs" / f"{stem}.yaml").absolute()
        for point in points:
            name = config_id(point, stem)
            overrides = [*assignments(point), *own]
            resolved = self.resolve_config(name, at, spec_path, overrides, data)
            if resolved is not None:
                self.add(
                    Config(
                        name, "parity", spec_path, overrides, point, of.id, resolved, at,
                        spec_text=text, spec_data=data, change=change,
                    )
                )  # fmt: skip

    def parity(self, i: int, e: Extra, of: Config, stem: str) -> tuple[str, dict, str] | None:
        """The dense spec at parity with ``of``, as text and data named ``stem``, and its summary."""
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

    def variant(
        self, i: int, e: Extra, of: Config | None, own: list[str], points: list[dict[str, Any]]
    ) -> None:
        """Another spec file (``spec:``), or ``of`` with the entry's overrides (an ablation)."""
        at = self.at("extra", i)
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
                of.spec_path, list(of.overrides), of.spec_data, of.spec_text, e.name,
            )  # fmt: skip
        for point in points:
            name = config_id(point, stem)
            overrides = [*start, *assignments(point), *own]
            resolved = self.resolve_config(name, at, spec_path, overrides, data)
            if resolved is None:
                continue
            change = None
            if of is not None:
                change = "; ".join(spec_change(spec_dict(of.resolved.spec), spec_dict(resolved.spec)))
            grid = {**of.grid, **point} if of is not None and e.spec is None else point
            ref = of.id if of is not None else None
            self.add(
                Config(
                    name, "extra", spec_path, overrides, grid, ref, resolved, at,
                    spec_text=text, spec_data=data, change=change or None,
                )
            )  # fmt: skip


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


# ----------------------------------------------------------------------------- without training


def dry_run_lines(p: Plan) -> list[str]:
    """One line per config with its counts (and its status when the sweep has a database)."""
    status: dict[str, str] = {}
    if store.db_path(p.out_dir).is_file():
        with store.connect(p.out_dir) as con:
            status = {r.id: r.status for r in store.rows(con)}
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


def commands(p: Plan, nproc: int = 1) -> list[str]:
    """One ``cartspec train ... --out ... --resume auto`` line per config (for a scheduler)."""
    return [c.command(p.run_dir(c)) + (f" --nproc {nproc}" if nproc > 1 else "") for c in p.configs]
