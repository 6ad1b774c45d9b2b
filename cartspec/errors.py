"""User-facing errors: every problem in a spec, each with the place it comes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in a spec: where (``file:line:col`` or ``--set ...``), which key, what."""

    where: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else f"{self.where}: {self.message}"


class SpecError(Exception):
    """A spec (or a command's input) is wrong; carries every problem found, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UserError(Exception):
    """A wrong input that is not a spec (missing run, bad flag value): one line, exit code 2."""
