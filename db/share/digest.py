"""Runs read from a database we trust (ours), and the digest that says two runs are the same.

Same content = same digest: `run_digest` hashes the run's config, status, epochs done, final
metrics and every recorded row (layers, epochs, layer statistics incl. histograms, decision
grids, test points), normalised by column type (NaN and NULL alike, floats exactly), computed
the same way for a shared file's rows and the target's. What people wrote on a run (name, notes,
tags) is left out: it is merged, not compared (`gradscope.db.share.merge`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Table,
    select,
)

from gradscope.db.clock import as_utc
from gradscope.db.share.base import (
    CHILD_TABLES,
    SURROGATE_ID,
    TABLES,
    SourceRun,
    chunks,
    content_columns,
)
from gradscope.vocab.fields import FINAL_COLUMNS

DIGEST_RUN_COLUMNS = ("config", "status", "epochs_done", *FINAL_COLUMNS)
ANNOTATION_TABLES = ("run_tags",)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Datetimes as aware UTC (PostgreSQL hands back the session's zone, SQLite naive UTC)."""
    return {k: as_utc(v) if hasattr(v, "tzinfo") else v for k, v in row.items()}


def read_runs(conn: Connection, run_ids: Sequence[str]) -> dict[str, SourceRun]:
    """The runs (with every recorded row) among `run_ids` that exist, keyed by id."""
    found: dict[str, SourceRun] = {}
    for chunk in chunks(run_ids):
        runs = TABLES["runs"]
        for row in conn.execute(select(runs).where(runs.c.id.in_(chunk))).mappings():
            found[row["id"]] = SourceRun.bare(_plain(dict(row)))
        for name in CHILD_TABLES:
            table = TABLES[name]
            # Without a surrogate row id (the target numbers its own rows), in its order.
            query = select(*content_columns(name)).where(table.c.run_id.in_(chunk))
            if name in SURROGATE_ID:
                query = query.order_by(table.c.id)
            for row in conn.execute(query).mappings():
                if row["run_id"] in found:  # rows whose run is gone are nobody's content
                    found[row["run_id"]].children[name].append(_plain(dict(row)))
    return found


def existing_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are runs of this database."""
    runs = TABLES["runs"]
    found: set[str] = set()
    for chunk in chunks(ids):
        found.update(conn.execute(select(runs.c.id).where(runs.c.id.in_(chunk))).scalars())
    return found


def _normal(column_type: object, value: Any) -> Any:
    """One value in a form that is equal exactly when the stored values are the same."""
    if value is None:
        return None
    if isinstance(column_type, Float):
        number = float(value)
        # NaN is stored as NULL by design; -0.0 may come back as 0 from SQLite.
        return None if number != number else (number + 0.0).hex()
    if isinstance(column_type, LargeBinary):
        return hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(column_type, JSON):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(column_type, Boolean):
        return bool(value)
    if isinstance(column_type, Integer):
        return int(value)
    if isinstance(column_type, DateTime):
        return as_utc(value).isoformat()
    return str(value)


def _normal_rows(table: Table, rows: list[dict[str, Any]], columns: Sequence[str]) -> list[list]:
    types = {c.name: c.type for c in table.columns}
    if table.name in SURROGATE_ID:  # no key: ordered by content (None first, then text)
        normal = [[_normal(types[c], r[c]) for c in columns] for r in rows]
        return sorted(normal, key=lambda row: [(v is not None, str(v)) for v in row])
    keys = [c.name for c in table.primary_key.columns if c.name != "run_id"]
    ordered = sorted(rows, key=lambda r: tuple(r[k] for k in keys))
    return [[_normal(types[c], r[c]) for c in columns] for r in ordered]


def run_digest(run: SourceRun) -> str:
    """sha256 of a run's content: config, status, results and every recorded row."""
    digest = hashlib.sha256()
    head = _normal_rows(TABLES["runs"], [run.run], DIGEST_RUN_COLUMNS)
    digest.update(json.dumps(head).encode())
    for name in CHILD_TABLES:
        if name in ANNOTATION_TABLES:
            continue  # what people wrote on a run is not its content: merged, not compared
        table = TABLES[name]
        columns = [c.name for c in content_columns(name) if c.name != "run_id"]
        digest.update(f"\n{name}\n".encode())
        digest.update(json.dumps(_normal_rows(table, run.children[name], columns)).encode())
    return digest.hexdigest()
