"""bench/mutation.py's rules stay aimed at the code: each plants its bug in exactly one place."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutant_finds_its_text_exactly_once_and_names_tests_that_exist():
    spec = importlib.util.spec_from_file_location("mutation", ROOT / "bench" / "mutation.py")
    assert spec is not None and spec.loader is not None
    mutation = importlib.util.module_from_spec(spec)
    sys.modules["mutation"] = mutation  # its dataclasses look their module up by name
    spec.loader.exec_module(mutation)
    stale = [
        f"{i} ({m.file}: {m.what})"
        for i, m in enumerate(mutation.MUTANTS, 1)
        if (ROOT / m.file).read_text().count(m.old) != 1
    ]
    assert stale == [], "mutants whose text moved: " + "; ".join(stale)
    missing = sorted({t for m in mutation.MUTANTS for t in m.tests if not (ROOT / t).is_file()})
    assert missing == []
