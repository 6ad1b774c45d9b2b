"""The one entry point of the pipeline: a spec (a file, or data in memory) -> :class:`Resolved`.

Every caller (the CLI, parity search, sweeps, the runtime reading a run folder) resolves
through :func:`resolve` or :func:`resolve_data`, so every spec that reaches codegen or training
has passed the same schema and semantic checks and reports problems at the same places.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cartspec.accounting import ParamReport, account
from cartspec.architecture import Architecture, resolve_architecture
from cartspec.checks import check_sharing, check_spec
from cartspec.graph import ModelGraph, build_graph
from cartspec.loader import Loaded, apply_set, load
from cartspec.schema import Spec
from cartspec.validate import validate


@dataclass(frozen=True)
class Resolved:
    """A spec after loading, validation and graph building: everything later stages need."""

    path: Path
    loaded: Loaded
    spec: Spec
    arch: Architecture
    graph: ModelGraph

    @property
    def sha256(self) -> str:
        """The architecture hash: what the generated code depends on."""
        return architecture_sha256(self.spec)

    @cached_property
    def params(self) -> ParamReport:
        """Stored and effective parameters and FLOPs (see docs/accounting.md)."""
        return account(self.graph)


def resolve(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Resolved:
    """Load a spec file (``extends:``, ``--set``), validate it and build its graph; raises
    SpecError with every located problem."""
    return resolve_loaded(load(path, overrides), Path(path))


def resolve_data(
    data: dict[str, Any],
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    loaded: Loaded | None = None,
) -> Resolved:
    """Resolve spec data held in memory (a sweep's config, a parity candidate, a run's
    ``spec.yaml``) with ``--set`` overrides applied; ``path`` names it in messages. ``loaded``
    keeps the source positions of the data's keys when they are known."""
    where = dict(loaded.where) if loaded is not None else {}
    files = list(loaded.files) if loaded is not None else [Path(path)]
    found = Loaded(data=copy.deepcopy(data), where=where, files=files)
    for override in overrides:
        found = apply_set(found, override)
    return resolve_loaded(found, Path(path))


def resolve_loaded(loaded: Loaded, path: Path) -> Resolved:
    """Schema, semantic checks, the concrete architecture, then the graph."""
    spec = validate(loaded)
    check_spec(spec, loaded)
    arch = resolve_architecture(spec)
    check_sharing(arch, loaded)
    return Resolved(path, loaded, spec, arch, build_graph(arch))


def spec_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain data with its YAML key names (``from`` not ``from_``)."""
    return spec.model_dump(mode="json", by_alias=True)


def architecture_sha256(spec: Spec) -> str:
    """Hash of what the generated code depends on: the model, blocks and share sections. Values
    equal to their defaults are left out, so a field the language gains (its default keeping the
    old behaviour) leaves every existing hash as it was."""
    data = spec.model_dump(
        mode="json", by_alias=True, include={"model", "blocks", "share"}, exclude_defaults=True
    )
    return _sha256(data)


def spec_sha256(spec: Spec) -> str:
    """Hash of the whole resolved spec, recipe included: a sweep's fingerprint of a config
    (defaults left out, as in :func:`architecture_sha256`)."""
    return _sha256(spec.model_dump(mode="json", by_alias=True, exclude_defaults=True))


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
