"""The README's spec reference is generated from the schema and stays in step with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cartspec.docs import END, START, main, spec_reference_markdown, with_reference
from cartspec.schema import Spec

README = Path(__file__).resolve().parents[1] / "README.md"


def rows() -> list[list[str]]:
    """The table's body rows, as cells."""
    lines = [line for line in spec_reference_markdown().splitlines() if line.startswith("| `")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def test_readme_holds_exactly_the_generated_reference():
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "README.md needs one spec-reference block"
    block = text.split(START)[1].split(END)[0]
    assert block == "\n" + spec_reference_markdown(), "stale spec reference: run python -m cartspec.docs"


def schema_keys(schema: dict, defs: dict) -> set[str]:
    """Every property name the JSON Schema of the spec accepts, at any depth."""
    keys: set[str] = set()
    stack = [schema]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref and ref not in seen:
                seen.add(ref)
                stack.append(defs[ref.split("/")[-1]])
            keys |= set(node.get("properties", {}))
            stack.extend(v for k, v in node.items() if k != "$defs")
        elif isinstance(node, list):
            stack.extend(node)
    return keys


def test_every_key_the_schema_accepts_has_a_row():
    schema = Spec.model_json_schema(by_alias=True)
    documented = {r[0].split("`")[1].split(".")[-1].removesuffix("[]") for r in rows()}
    assert schema_keys(schema, schema["$defs"]) - documented == set()


def test_every_row_says_its_type_default_and_meaning():
    for key, type_, default, meaning in rows():
        assert type_ and default and meaning, key


def test_union_members_are_listed_per_kind():
    gate = [(r[0], r[1]) for r in rows() if r[0].startswith("`blocks.core.gate.")]
    assert gate == [
        ("`blocks.core.gate.kind` *(lti)*", "`lti`"),
        ("`blocks.core.gate.init` *(lti)*", "number in (0, 1)"),
        ("`blocks.core.gate.form` *(lti)*", "one of `cart`, `contractive`"),
        ("`blocks.core.gate.kind` *(residual)*", "`residual`"),
        ("`blocks.core.gate.kind` *(decay)*", "`decay`"),
        ("`blocks.core.gate.b_init` *(decay)*", "number in [-10000.0, 10^4]"),
    ]


def test_rows_show_bounds_defaults_and_nullability_from_the_schema():
    by_key = {r[0]: r[1:] for r in rows()}
    assert by_key["`blocks.core.loops`"] == [
        "integer in [1, 256]",
        "required",
        "R: how many times the core runs per forward.",
    ]
    assert by_key["`model.head_dim`"][:2] == ["integer in [4, 1024]", "`64`"]
    assert by_key["`blocks.core.gate`"][:2] == [
        "mapping with `kind`: `lti`, `residual`, `decay` or `null`",
        "`null`",
    ]
    assert by_key["`blocks.anchor.from`"][1] == "`prelude`"  # the YAML key, not the Python field from_


def test_docs_script_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nintro\n\n{START}\nold table\n{END}\n\n## after\n")
    assert main(["--readme", str(readme), "--check"]) == 1
    assert main(["--readme", str(readme)]) == 0
    assert (
        readme.read_text() == f"# title\n\nintro\n\n{START}\n{spec_reference_markdown()}{END}\n\n## after\n"
    )
    assert main(["--readme", str(readme), "--check"]) == 0


def test_a_readme_without_markers_is_an_error_not_a_rewrite():
    with pytest.raises(ValueError, match="spec-reference"):
        with_reference("# no block here\n")
