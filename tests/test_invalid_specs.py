"""Invalid specs, drawn at random, through the real CLI: exit code 2, one located line per problem,
no traceback, nothing written. Then the security properties: YAML is read with a safe loader, and
nothing a spec says reaches the generated code except validated identifiers and numbers.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import os
import re
import tempfile
from pathlib import Path

import pytest
import typer.main
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    BAD_NAMES,
    SpecFiles,
    examples,
    invalid_cases,
    random_cases,
    resolved,
    valid_specs,
    write_files,
)

from cartspec.accounting import account
from cartspec.cli import app
from cartspec.codegen.render import render
from cartspec.errors import SpecError
from cartspec.loader import printable
from cartspec.resolve import resolve
from cartspec.schema import IDENTIFIER

LOCATED = re.compile(r"^(?P<file>[^:\n]+)(?::\d+:\d+)?: \S")


@contextlib.contextmanager
def inside(folder: Path):
    """Run in ``folder``, so errors name files as a user there would type them."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(old)


@functools.cache
def command():
    """The click command typer builds from the app (typer's own CliRunner rebuilds it every call)."""
    return typer.main.get_command(app)


def invoke(*args: str):
    """The real CLI, in-process: same parsing, same error handling, stderr apart from stdout."""
    result = CliRunner().invoke(command(), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an internal error: show its traceback
    return result


def assert_refused(result, case: SpecFiles) -> None:
    """Exit code 2 and every stderr line a located problem in one of the case's files or --sets."""
    out = result.stdout + result.stderr
    assert result.exit_code == 2, (case.label, result.exit_code, out)
    assert "Traceback" not in out
    lines = result.stderr.splitlines()
    assert lines, (case.label, out)
    for line in lines:
        if line.startswith("--set "):
            assert any(line.startswith(f"--set {printable(s)}: ") for s in case.sets), line
        else:
            m = LOCATED.match(line)
            assert m and m["file"] in case.files, (case.label, line)
    if case.expect is not None:
        assert case.expect in result.stderr, (case.label, case.expect, result.stderr)


@settings(max_examples=examples(ci=500, dev=60))
@given(case=invalid_cases())
def test_every_invalid_spec_is_refused_with_located_lines_and_nothing_is_written(case):
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)) as folder:
        write_files(folder, case)
        assert_refused(invoke("validate", *case.args()), case)
        assert_refused(invoke("compile", *case.args(), "-o", "out"), case)
        assert not (folder / "out").exists()


def test_an_invalid_spec_among_valid_ones_writes_none_of_them(tmp_path):
    good = "name: good\nmodel: {vocab_size: 20, d_model: 16, max_seq_len: 8, head_dim: 8}\n"
    good += "blocks: {stack: {layers: 1, attention: {kind: mha}}}\n"
    (tmp_path / "good.yaml").write_text(good)
    (tmp_path / "bad.yaml").write_text(good.replace("name: good", "name: bad").replace("16", "17"))
    with inside(tmp_path):
        result = invoke("compile", "good.yaml", "bad.yaml", "-o", "out")
    assert_refused(result, SpecFiles({"good.yaml": "", "bad.yaml": ""}))
    assert not (tmp_path / "out").exists()


@settings(max_examples=examples(ci=200, dev=40))
@given(case=random_cases())
def test_any_edit_of_a_valid_spec_is_accepted_or_refused_cleanly(case):
    """The fuzz benchmark's property: SpecError or a spec that accounts and compiles, nothing else."""
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)) as folder:
        write_files(folder, case)
        try:
            r = resolve(case.main, case.sets)
        except SpecError as e:
            assert e.problems
            for p in e.problems:
                assert "\n" not in str(p) and str(p).isprintable(), str(p)
            return
    report = account(r.graph)
    assert report.effective >= report.stored > 0
    ast.parse(render(r))


# ----------------------------------------------------------------------------- security

MARKER = "PWNED_MARKER"
PAYLOADS = [
    '!!python/object/apply:os.system ["touch {m}"]',
    '!!python/object/new:os.system ["touch {m}"]',
    '!!python/object/apply:subprocess.check_call [["touch", "{m}"]]',
    '!!python/object/apply:os.system {{args: ["touch {m}"]}}',
    "!!python/name:os.system",
    "!!python/module:os",
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("place", ["value", "key", "document", "--set"])
def test_python_yaml_tags_are_refused_and_never_run(tmp_path, payload, place):
    marker = tmp_path / MARKER
    tag = payload.format(m=marker)
    spec = "name: t\nmodel: {vocab_size: 20, d_model: 16, max_seq_len: 8, head_dim: 8}\n"
    spec += "blocks: {stack: {layers: 1, attention: {kind: mha}}}\n"
    sets: list[str] = []
    if place == "value":
        spec += f"description: {tag}\n"
    elif place == "key":
        spec += f"? {tag}\n: 1\n"
    elif place == "document":
        spec = f"{tag}\n"
    else:
        sets = [f"description={tag}"]
    (tmp_path / "spec.yaml").write_text(spec)
    case = SpecFiles({"spec.yaml": spec}, "spec.yaml", sets, f"tag as {place}")
    with inside(tmp_path):
        for command in (["validate"], ["compile", "-o", "out"]):
            result = invoke(*command[:1], *case.args(), *command[1:])
            assert_refused(result, case)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


CODE_LIKE = [
    '"""; import os; os.system("echo pwned") #',
    "'); __import__('os').system('id') #",
    "\nimport os\nos.system('id')\n",
    "{{ config.__class__ }} {% raw %}",
    "\\\\x00 \\n \\' \\\"",
]


@settings(max_examples=examples(ci=100, dev=25))
@given(spec=valid_specs(), text=st.one_of(st.text(max_size=80), st.sampled_from(CODE_LIKE)))
def test_description_never_reaches_the_generated_code(spec, text):
    plain = copy.deepcopy(spec)
    plain.pop("description", None)
    marked = {**copy.deepcopy(spec), "description": f"{text} ZQX_DESCRIPTION_MARKER {text}"}
    source = render(resolved(marked))
    assert "ZQX_DESCRIPTION_MARKER" not in source
    assert source == render(resolved(plain))


NAMES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(BAD_NAMES + CODE_LIKE),
    st.from_regex(IDENTIFIER, fullmatch=True),
)
LOOPED = {
    "model": {"vocab_size": 20, "d_model": 16, "max_seq_len": 8, "head_dim": 8},
    "blocks": {
        "prelude": {"layers": 2, "attention": {"kind": "mha"}},
        "anchor": {"from": "prelude"},
        "core": {"loops": 2, "attention": {"kind": "cross", "to": "anchor"}},
    },
    "share": [{"name": "tied", "members": ["prelude.0", "prelude.1"]}],
}
SLOTS = {  # where a name goes: (path to set, the dotted path an error names)
    "name": (("name",), "name"),
    "share.name": (("share", 0, "name"), "share.0.name"),
    "attention.to": (("blocks", "core", "attention", "to"), "blocks.core.attention.to"),
    "anchor.from": (("blocks", "anchor", "from"), "blocks.anchor.from"),
    "share.members": (("share", 0, "members", 1), "share.0.members.1"),
}


@settings(max_examples=examples(ci=200, dev=40))
@given(slot=st.sampled_from(sorted(SLOTS)), text=NAMES)
def test_only_identifiers_pass_where_a_name_reaches_the_code(slot, text):
    """name, share[].name, attention.to and anchor.from become Python names: anything else is refused
    with one printable line; a share member that names no module is refused too."""
    spec = {"name": "t", **copy.deepcopy(LOOPED)}
    path, dotted = SLOTS[slot]
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = text
    try:
        r = resolved(spec)
    except SpecError as e:
        lines = [str(p) for p in e.problems]
        assert all("\n" not in line and line.isprintable() for line in lines), lines
        if slot != "share.members" and not re.fullmatch(IDENTIFIER, text):
            assert any(p.path == dotted and "is not a name" in p.message for p in e.problems), lines
        return
    assert slot == "share.members" and text == "prelude.1" or re.fullmatch(IDENTIFIER, text), text
    ast.parse(render(r))
