"""Read spec files: safe YAML with source positions, ``extends:`` chains and ``--set`` overrides.

Precedence, lowest first: the base named by ``extends:`` (recursively), the file that extends
it, then each ``--set path=value`` in command-line order. Mappings merge key by key, lists and
scalars replace, and ``null`` removes a key (so the schema's default applies again).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cartspec.errors import Problem, SpecError
from cartspec.files import TooLarge, Unreadable, kind_of, read_bounded, reason

Path_ = tuple[str | int, ...]

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; anything larger is a mistake
MAX_YAML_NODES = 100_000  # stops alias bombs before they are expanded
MAX_EXTENDS_DEPTH = 16
SPEC_SUFFIXES = (".yaml", ".yml")  # what extends: may name
PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
MAX_FLOW_DEPTH = 64  # [ and { nesting; a spec needs a handful


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing flow collections nested deeper than MAX_FLOW_DEPTH: its
    scanner does work proportional to the depth for every token, so ``[[[[...`` a few hundred
    thousand deep would take hours."""

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"nested too deeply (more than {MAX_FLOW_DEPTH} levels)", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)


# YAML 1.1 (PyYAML) reads 1e-3 as a string because it has no dot; YAML 1.2 and every user read it
# as a number. With no coercion in the schema, the loader resolves it as the float it is.
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Loaded:
    """A spec as plain data, the position every key came from, and the files it was read from."""

    data: dict[str, Any]
    where: dict[Path_, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def locate(self, path: Path_) -> str:
        """The source position of ``path``, or of its nearest ancestor that has one."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return display(self.files[0]) if self.files else "<spec>"


def display(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it.

    Non-printable characters (a newline in a file name) are escaped, so an error stays one line
    and a path written into a generated file's banner cannot start a line of code.
    """
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return printable(Path(path).as_posix())
    return printable(Path(path).as_posix() if rel.startswith("..") else Path(rel).as_posix())


def printable(text: str) -> str:
    """``text`` unchanged when printable, else with backslash escapes (one line, no control codes)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _read_text(path: Path) -> str:
    """The text of a spec file: a regular file (never a FIFO or device, which would block or
    never end) of at most MAX_SPEC_BYTES, in UTF-8, without NUL bytes."""
    try:
        raw = read_bounded(path, MAX_SPEC_BYTES)
    except TooLarge as e:
        message = f"file is {e.size:,} bytes; a spec may be at most {MAX_SPEC_BYTES:,}"
        raise SpecError([Problem(display(path), "", message)]) from None
    except Unreadable as e:
        message = f"{e}, expected a YAML spec file" if str(e) == "is a directory" else str(e)
        raise SpecError([Problem(display(path), "", message)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([Problem(display(path), "", f"not UTF-8 text (byte {e.start})")]) from None
    if "\x00" in text:
        raise SpecError([Problem(display(path), "", "binary file, expected a YAML spec")])
    return text


_UNREADABLE = object()  # a scalar already reported as a problem


def _mark(file: str, node: yaml.Node) -> str:
    return f"{file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


class _Builder:
    """Turns a composed YAML node tree into plain data, remembering where each key stood."""

    def __init__(self, file: str):
        self.file = file
        self.where: dict[Path_, str] = {}
        self.problems: list[Problem] = []
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise SpecError(
                [
                    Problem(
                        _mark(self.file, node),
                        "",
                        f"more than {MAX_YAML_NODES:,} YAML nodes (alias bomb?)",
                    )
                ]
            )
        if isinstance(node, yaml.CollectionNode) and node.tag not in PLAIN_TAGS:
            # scalars go through the safe constructor, which refuses such tags; collections are
            # built here, so refuse them here too rather than silently dropping the tag
            raise SpecError(
                [
                    Problem(
                        _mark(self.file, node),
                        "",
                        f"invalid YAML: could not determine a constructor for the tag '{node.tag}'",
                    )
                ]
            )
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` (constructing it would fail)
                    self.problems.append(
                        Problem(
                            _mark(self.file, key_node),
                            _dotted(path),
                            "YAML merge keys are not supported; use extends:",
                        )
                    )
                    continue
                key = self._scalar(key_node, path)
                if key is _UNREADABLE:
                    continue
                if not isinstance(key, str):
                    self.problems.append(
                        Problem(
                            _mark(self.file, key_node),
                            _dotted(path),
                            f"key {_clipped(repr(key), 80)} is not a string",
                        )
                    )
                    continue
                if not key.isprintable():  # no spec key has a newline; keeps every error one line
                    self.problems.append(
                        Problem(_mark(self.file, key_node), _dotted(path), f"key {key!r} is not a name")
                    )
                    continue
                if key in out:
                    self.problems.append(
                        Problem(_mark(self.file, key_node), _dotted((*path, key)), "duplicate key")
                    )
                    continue
                self.where[(*path, key)] = _mark(self.file, key_node)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.where[(*path, i)] = _mark(self.file, item)
                items.append(self.build(item, (*path, i)))
            return items
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        """A scalar through the safe constructor; a value it cannot build (an integer past
        Python's digit limit, a date that does not exist) is a located problem."""
        try:
            return self.constructor.construct_object(node)
        except ValueError as e:
            self.problems.append(Problem(_mark(self.file, node), _dotted(path), unreadable_value(e)))
            return _UNREADABLE


def unreadable_value(error: ValueError) -> str:
    """Why a YAML scalar has no value, in one line (Python's own advice to raise its integer
    digit limit is left out: a spec never needs such a number)."""
    first = printable(str(error).split("; use sys.set_int_max_str_digits")[0])
    return f"cannot read this value ({first})"


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _yaml_problem(file: str, e: yaml.YAMLError) -> Problem:
    """One located line for a YAML error (PyYAML's own text spans several lines)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        return Problem(where, "", f"invalid YAML: {printable(str(e.problem or e.context))}")
    # a ReaderError (a control character in the text): its first line; the rest names the stream
    return Problem(file, "", f"invalid YAML: {printable(str(e).splitlines()[0])}")


SPEC_KEYS = "name:, model: and blocks:"  # what an empty spec file is told it lacks


def read_yaml(path: Path, expected: str = SPEC_KEYS) -> Loaded:
    """Parse one YAML file (safe loader only) into data plus key positions; no extends.
    ``expected`` names the keys such a file needs, for the message about an empty one."""
    text = _read_text(path)
    file = display(path)
    try:
        node = yaml.compose(text, Loader=_SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([_yaml_problem(file, e)]) from None
    except RecursionError:  # PyYAML composes recursively: [[[[... a few thousand deep
        raise SpecError([Problem(file, "", "invalid YAML: nested too deeply")]) from None
    if node is None:
        raise SpecError([Problem(file, "", f"empty file, expected a YAML mapping with {expected}")])
    if not isinstance(node, yaml.MappingNode):
        raise SpecError([Problem(_mark(file, node), "", "a spec must be a YAML mapping")])
    builder = _Builder(file)
    try:
        if _expanded_size(node) > MAX_YAML_NODES:  # counted on the composed graph: no expansion
            raise SpecError(
                [Problem(_mark(file, node), "", f"more than {MAX_YAML_NODES:,} YAML nodes (alias bomb?)")]
            )
        data = builder.build(node, ())
    except yaml.YAMLError as e:  # e.g. a tag the safe loader refuses (!!python/object)
        raise SpecError([_yaml_problem(file, e)]) from None
    except RecursionError:
        raise SpecError([Problem(file, "", "invalid YAML: nested too deeply")]) from None
    if builder.problems:
        raise SpecError(builder.problems)
    return Loaded(data=data, where=builder.where, files=[path])


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes ``root`` has once every alias is expanded, in time linear in the composed
    (unexpanded) graph; a recursive alias counts as too many."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = MAX_YAML_NODES + 1  # until known: a node inside itself is infinite
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
        return sizes[id(node)]

    return size(root)


def merge(base: Loaded, over: Loaded) -> Loaded:
    """Deep-merge ``over`` onto ``base``: mappings merge, lists/scalars replace, null removes."""
    where = dict(base.where)

    def go(b: Any, o: Any, path: Path_) -> Any:
        if isinstance(b, dict) and isinstance(o, dict):
            out = dict(b)
            for key, value in o.items():
                sub = (*path, key)
                if value is None:
                    out.pop(key, None)
                    _forget(where, sub)
                elif key in out:
                    if not (isinstance(out[key], dict) and isinstance(value, dict)):
                        _forget(where, sub)
                    out[key] = go(out[key], value, sub)
                else:
                    out[key] = value
            return out
        return o

    data = go(base.data, over.data, ())
    for path, mark in over.where.items():
        where[path] = mark
    return Loaded(data=data, where=where, files=[*over.files, *base.files])


def _forget(where: dict[Path_, str], prefix: Path_) -> None:
    for path in [p for p in where if p[: len(prefix)] == prefix]:
        del where[path]


def load(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), _chain: tuple[Path, ...] = ()
) -> Loaded:
    """Load a spec file with its ``extends:`` chain resolved and ``--set`` overrides applied."""
    path = Path(path).absolute()
    loaded = read_yaml(path)
    parent = loaded.data.pop("extends", None)
    if parent is not None:
        where = loaded.where.pop(("extends",), display(path))
        if not isinstance(parent, str) or not parent:
            raise SpecError([Problem(where, "extends", "must be a path to another spec file")])
        base_path = (path.parent / parent).absolute()
        refusal = _extends_refusal(base_path)
        if refusal:
            raise SpecError([Problem(where, "extends", refusal)])
        chain = (*_chain, path)
        if base_path in chain:
            cycle = " -> ".join(display(p) for p in (*chain, base_path))
            raise SpecError([Problem(where, "extends", f"extends cycle: {cycle}")])
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise SpecError(
                [Problem(where, "extends", f"extends chain deeper than {MAX_EXTENDS_DEPTH} files")]
            )
        base = load(base_path, (), chain)
        base.data.pop("name", None)  # a spec's name is its own, never inherited
        base.where.pop(("name",), None)
        loaded = merge(base, loaded)
    for override in overrides:
        loaded = apply_set(loaded, override)
    return loaded


def _clipped(text: str, width: int = 400) -> str:
    """An override as it is quoted in messages: a 5,000-digit value is not echoed whole."""
    return text if len(text) <= width else f"{text[: width - 3]}..."


def _extends_refusal(target: Path) -> str:
    """Why ``target`` cannot be a base spec, or "". A spec extends only other specs: a regular
    ``.yaml``/``.yml`` file (relative to the extending file, or absolute). Any other file is
    refused before it is read, so its contents never appear in a message."""
    try:
        mode = os.stat(target).st_mode
    except OSError as e:
        return f"{reason(e)}: {display(target)}"
    if not stat.S_ISREG(mode):
        return (
            f"{display(target)} is {'a directory' if stat.S_ISDIR(mode) else kind_of(mode)}, not a spec file"
        )
    if target.suffix not in SPEC_SUFFIXES:
        return f"{display(target)} is not a .yaml or .yml file; a spec extends only another spec"
    return ""


def apply_set(loaded: Loaded, override: str) -> Loaded:
    """Apply one ``dotted.path=value`` override; the value is parsed as YAML."""
    where = f"--set {_clipped(printable(override))}"
    if "=" not in override:
        raise SpecError([Problem(where, "", "expected dotted.path=value")])
    key, _, raw = override.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts) or not key.isprintable():
        raise SpecError([Problem(where, "", f"bad path {key!r}")])
    try:
        value = yaml.load(raw, Loader=_SafeLoader) if raw.strip() else None  # a SafeLoader
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError([Problem(where, key, f"value is not valid YAML: {problem}")]) from None
    except RecursionError:
        raise SpecError([Problem(where, key, "value is not valid YAML: nested too deeply")]) from None
    except ValueError as e:  # a number past the digit limit, a date that does not exist
        raise SpecError([Problem(where, key, unreadable_value(e))]) from None
    if key.strip() == "extends":
        raise SpecError([Problem(where, key, "extends cannot be set from the command line")])
    path: list[str | int] = []
    node: Any = loaded.data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(
                    [
                        Problem(
                            where,
                            key,
                            f"{_dotted(tuple(path)) or 'spec'} is a list of {len(node)}; no item {part!r}",
                        )
                    ]
                )
            index = int(part)
            path.append(index)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise SpecError([Problem(where, key, f"{_dotted(tuple(path))} is a value, not a mapping")])
        path.append(part)
        if last:
            if value is None:
                node.pop(part, None)
            else:
                node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
                loaded.where[tuple(path)] = where  # a mapping this --set created
            node = node[part]
    _forget(loaded.where, tuple(path))
    loaded.where[tuple(path)] = where
    return loaded
