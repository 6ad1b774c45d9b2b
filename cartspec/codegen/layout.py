"""Lay out generated lines as ruff format would, so generated code is format-clean by construction."""

from __future__ import annotations

LINE_LENGTH = 110  # pyproject's ruff line-length


def wrap(indent: int, head: str, items: list[str], tail: str, sep: str = ", ") -> list[str]:
    """Lay out ``head item, item tail`` as ruff format would: one line, hugged, or exploded."""
    one = head + sep.join(items) + tail
    if indent + len(one) <= LINE_LENGTH:
        return [one]
    hugged = "    " + sep.join(items)
    if indent + len(hugged) <= LINE_LENGTH:
        return [head, hugged, tail]
    return [head, *(f"    {item}," for item in items), tail]


def module_list(indent: int, attr: str, element: str, count: str, index: str = "_") -> list[str]:
    """``self.<attr> = nn.ModuleList([element for index in range(count)])``, laid out as ruff would."""
    comprehension = f"[{element} for {index} in range({count})]"
    lines = wrap(indent, f"self.{attr} = nn.ModuleList(", [comprehension], ")")
    if len(lines) == 3 and indent + len(lines[1]) > LINE_LENGTH:
        lines = [
            lines[0],
            "    [",
            f"        {element}",
            f"        for {index} in range({count})",
            "    ]",
            ")",
        ]
    return lines
