"""The front of the pipeline: spec file (+ extends, + --set) -> validated Spec -> ModelGraph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cartspec.graph import ModelGraph, build_graph
from cartspec.loader import Loaded, load
from cartspec.schema import Spec
from cartspec.validate import validate


@dataclass(frozen=True)
class Resolved:
    """A spec after loading, validation and graph building: everything later stages need."""

    path: Path
    loaded: Loaded
    spec: Spec
    graph: ModelGraph


def resolve(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Resolved:
    """Load, validate and build the graph; raises SpecError with every located problem."""
    loaded = load(path, overrides)
    spec = validate(loaded)
    return Resolved(Path(path), loaded, spec, build_graph(spec, loaded))
