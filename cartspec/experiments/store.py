"""A sweep's results store: ``<sweep>/results.db`` (SQLite, no torch).

Table ``runs`` holds one row per config with its counts (known before training), its final
metrics (after) and its status: pending -> running -> done | failed. Table ``loop_evals`` holds
validation at other loop counts (the paper's variable-R test). Run folders are stored relative
to the sweep folder, so a sweep can be moved or copied off a cluster whole.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cartspec.errors import UserError

STATUSES = ("pending", "running", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,          -- config id, also the run folder's name
    position INTEGER NOT NULL,    -- order in the sweep
    role TEXT NOT NULL,           -- grid | extra | parity
    ref TEXT,                     -- the config it is a variant or baseline of (of:)
    change TEXT,                  -- what differs from ref's spec, in dotted paths
    spec TEXT NOT NULL,           -- the spec's name
    spec_path TEXT NOT NULL,      -- the spec file the runtime reads
    overrides TEXT NOT NULL,      -- JSON list of --set strings, applied in order
    grid TEXT NOT NULL,           -- JSON object: the grid values of this config
    fingerprint TEXT NOT NULL,    -- sha256 of the resolved spec
    looped INTEGER NOT NULL,      -- 1 when the model has a core
    loops INTEGER,                -- R
    d_model INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    effective INTEGER NOT NULL,
    effective_paper INTEGER NOT NULL,
    forward_flops INTEGER NOT NULL,  -- per sequence at max_seq_len, the paper's convention
    steps INTEGER NOT NULL,
    tokens INTEGER,
    train_loss REAL,              -- the last logged training loss
    val_loss REAL,
    val_ppl REAL,
    rho REAL,
    wall_s REAL,                  -- training time, summed over every attempt but a killed one
    tokens_per_s REAL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    error TEXT,
    run_dir TEXT NOT NULL,        -- relative to the sweep folder
    updated_at TEXT
);
CREATE TABLE IF NOT EXISTS loop_evals (
    run_id TEXT NOT NULL REFERENCES runs(id),
    loops INTEGER NOT NULL,
    val_loss REAL NOT NULL,
    val_ppl REAL NOT NULL,
    PRIMARY KEY (run_id, loops)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass
class Row:
    """One row of ``runs``."""

    id: str
    position: int
    role: str
    ref: str | None
    change: str | None
    spec: str
    spec_path: str
    overrides: str
    grid: str
    fingerprint: str
    looped: int
    loops: int | None
    d_model: int
    stored: int
    effective: int
    effective_paper: int
    forward_flops: int
    steps: int
    tokens: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    rho: float | None = None
    wall_s: float | None = None
    tokens_per_s: float | None = None
    status: str = "pending"
    error: str | None = None
    run_dir: str = ""
    updated_at: str | None = None

    @property
    def grid_values(self) -> dict[str, Any]:
        return json.loads(self.grid)

    @property
    def override_list(self) -> list[str]:
        return json.loads(self.overrides)


COLUMNS = [f.name for f in fields(Row)]


def db_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "results.db"


@contextmanager
def connect(sweep_dir: Path, create: bool = False) -> Iterator[sqlite3.Connection]:
    """An open results database (created with its tables when ``create``); commits on success.

    Without ``create`` it is opened read-only and must hold a sweep's tables: a report or a dry
    run never writes to it, so an empty or foreign file is left exactly as it was."""
    path = db_path(sweep_dir)
    if not create and not path.is_file():
        raise UserError(f"{sweep_dir}: no results.db here (run `cartspec sweep` first)")
    con = _open(path) if create else _open_read_only(path)
    con.row_factory = sqlite3.Row
    try:
        yield con
        con.commit()
    finally:
        con.close()


def _open(path: Path) -> sqlite3.Connection:
    """The database at ``path``, created with its tables if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path, timeout=30)
        con.executescript(SCHEMA)
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: not a results database ({e})") from None
    return con


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The existing database at ``path``, read-only, once it holds a sweep's tables."""
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: not a results database ({e})") from None
    missing = sorted({"runs", "loop_evals", "meta"} - tables)
    if missing:
        con.close()
        what = "an empty file" if not tables else f"no {', '.join(missing)} table"
        raise UserError(f"{path}: not a results database of a sweep ({what}); left as it is")
    return con


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def get(con: sqlite3.Connection, run_id: str) -> Row | None:
    found = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return Row(**dict(found)) if found is not None else None


def rows(con: sqlite3.Connection) -> list[Row]:
    return [Row(**dict(r)) for r in con.execute("SELECT * FROM runs ORDER BY position, id")]


def put(con: sqlite3.Connection, row: Row) -> None:
    """Insert or replace a whole row."""
    row.updated_at = now()
    marks = ", ".join("?" for _ in COLUMNS)
    con.execute(
        f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({marks})",
        [getattr(row, c) for c in COLUMNS],
    )
    con.commit()


def update(con: sqlite3.Connection, run_id: str, **values: Any) -> None:
    """Set some columns of one row (and its updated_at); commits at once."""
    bad = set(values) - set(COLUMNS)
    assert not bad, f"unknown columns {bad}"
    if "status" in values:
        assert values["status"] in STATUSES, values["status"]
    values["updated_at"] = now()
    assignments = ", ".join(f"{k} = ?" for k in values)
    con.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*values.values(), run_id])
    con.commit()


def put_loop_evals(con: sqlite3.Connection, run_id: str, evals: list[tuple[int, float, float]]) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO loop_evals (run_id, loops, val_loss, val_ppl) VALUES (?, ?, ?, ?)",
        [(run_id, n, loss, ppl) for n, loss, ppl in evals],
    )
    con.commit()


def loop_evals(con: sqlite3.Connection) -> dict[str, list[tuple[int, float, float]]]:
    """run id -> [(loops, val_loss, val_ppl)] in loop order."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in con.execute("SELECT run_id, loops, val_loss, val_ppl FROM loop_evals ORDER BY run_id, loops"):
        out.setdefault(r["run_id"], []).append((r["loops"], r["val_loss"], r["val_ppl"]))
    return out


def set_meta(con: sqlite3.Connection, **values: str) -> None:
    con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))
    con.commit()


def meta(con: sqlite3.Connection) -> dict[str, str]:
    return {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}
