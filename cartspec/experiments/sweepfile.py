"""The sweep file: one YAML file that names many runs (no torch).

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
claims:                                 # statements the report tests over seeds (see report.py)
  - {claim: Dense beats CART at stored parity, variant: dense_stored_r4, base: d128_r4, expect: lower}
```

Problems are reported like a spec's, as ``file:line:col: path: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cartspec.loader import Loaded, read_yaml
from cartspec.schema import IDENTIFIER, Identifier
from cartspec.validate import validate_as


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


class Claim(_Strict):
    """A statement the sweep tests: a variant group's measure against a base group's (or, for
    ``loop_peak``, one group's alone), with the direction it should go. Groups are config ids
    without their seed part (``base`` for the grid's own seeds)."""

    claim: str = Field(..., min_length=1, max_length=200, description="The statement, as a reader says it.")
    paper: str = Field(
        "", max_length=200, description="The figure it is compared with, as a source reports it."
    )
    variant: str = Field(..., pattern=IDENTIFIER, description="The group the claim is about.")
    base: str | None = Field(None, pattern=IDENTIFIER, description="The group it is compared with.")
    measure: Literal["val_loss", "rho", "loop_range", "loop_peak"] = Field(
        "val_loss",
        description="val_loss: final validation loss (shown as a perplexity ratio); rho: the LTI gate's "
        "final rho; loop_range: worst minus best validation loss over the evaluated loop counts; "
        "loop_peak: the best other loop count's loss minus the trained R's (needs no base).",
    )
    expect: Literal["lower", "higher", "same", "differs"] = Field(
        ...,
        description="How variant minus base should come out: below zero, above, within noise, or either way.",
    )


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
    claims: list[Claim] = Field(default_factory=list, description="Statements the report tests over seeds.")

    _overrides = field_validator("set", mode="before")(_check_overrides)
    _grid = field_validator("grid", mode="before")(_check_grid)

    @field_validator("eval_loops", mode="before")
    @classmethod
    def _loop_counts(cls, v: Any) -> Any:
        counts_ok = isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
        if isinstance(v, bool) or counts_ok and v and min(v) >= 1:
            return v
        raise ValueError(f"expected true, false or a list of loop counts >= 1, got {v!r}")


def load_sweep_file(path: Path) -> tuple[SweepFile, Loaded]:
    """Read and validate a sweep file; raises SpecError with every problem, located."""
    loaded = read_yaml(Path(path).absolute(), expected="base: and grid: or extra:")
    return validate_as(SweepFile, loaded), loaded
