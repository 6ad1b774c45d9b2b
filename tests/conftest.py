"""Shared helpers: the CLI run in-process (fast) or as a real process, and spec files written by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CliResult = tuple[int, str, str]  # (exit code, stdout, stderr)


def run_cli_process(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> CliResult:
    """``python -m cartspec ARGS`` as a whole process, exactly as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "cartspec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def run_cli_in_process(*args: str) -> CliResult:
    """The same CLI through typer's test runner: same parsing, same error handling, no interpreter start."""
    from typer.testing import CliRunner

    from cartspec.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an internal error is a bug: show its traceback
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., CliResult]:
    """``run_cli(*args) -> (rc, stdout, stderr)`` from a real ``python -m cartspec`` process."""
    return run_cli_process


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """``cli(*args) -> (rc, stdout, stderr)`` in-process; use it for everything but the process-level checks."""
    return run_cli_in_process


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the runs of a test module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cartspec_cache(token_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$CARTSPEC_CACHE set to the module's token cache, where the in-process CLI finds it."""
    monkeypatch.setenv("CARTSPEC_CACHE", str(token_cache))
    return token_cache


def write_text(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    """Write ``text`` (dedented, leading newline dropped) as ``directory/name``; return its path.

    Line 1 of the file is the first line of the triple-quoted string, so the line numbers a test
    expects can be read straight off the test.
    """
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def spec_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, so errors name files as the user typed them (``spec.yaml:7:5``)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_spec(spec_dir: Path) -> Callable[..., Path]:
    """``write_spec(text, name="spec.yaml") -> Path``: a spec file in the test's working directory."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        return write_text(spec_dir, text, name)

    return write


# Hypothesis profiles: "ci" (HYPOTHESIS_PROFILE=ci, set by .ci/run) draws the full budget with a fixed
# seed, so a failure reproduces anywhere; "dev" (the default) draws fewer, fresh examples each run.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_run("cart" | "dense") -> Path``: a finished 20-step run, trained once per session on a
    small generated corpus: ``cart`` is cart_tiny shrunk, on raw bytes; ``dense`` is dense_tiny
    shrunk, with a BPE tokenizer (vocabulary smaller than the model's). Copy it before changing it."""
    import random

    from gen_helpers import CART_TINY, DENSE_TINY
    from test_train_cli import TINY

    from cartspec.resolve import resolve
    from cartspec.runtime.loop import Options, train

    root = tmp_path_factory.mktemp("tiny_runs")
    rng = random.Random(0)
    words = ["and", "the", "lord", "said", "unto", "him", "in", "that", "day", "of", "light"]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(50)) for _ in range(200)))
    recipes = {"cart": (CART_TINY, []), "dense": (DENSE_TINY, ["train.data.tokenizer=bpe"])}
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            spec, extra = recipes[kind]
            out = root / kind
            sets = [*TINY, f"train.data.source={corpus}", *extra]
            train(
                resolve(spec, sets), Options(out=out, device="cpu", cache_dir=root / "cache", progress=False)
            )
            done[kind] = out
        return done[kind]

    return get
