"""Shared by the integrations' tests: a run's recorded statistics, and the comparison of two
runs that measured the same training (a trainer's callback and a plain loop)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from gradscope.vocab.fields import GRAD_STAT_FIELDS, HIST_SLOTS

# The gradient statistics and the update ratio (activation health needs a probe: not used).
COMPARED = tuple(GRAD_STAT_FIELDS)


def run_ids(db: Path, name: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM runs WHERE name = ?", (name,))]


def run_row(db: Path, run_id: str) -> dict:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())


def stats(db: Path, run_id: str) -> dict[tuple[int, str], dict[str, object]]:
    """(epoch, layer name) -> the recorded statistics and histogram."""
    cols = ", ".join(f"s.{f}" for f in COMPARED)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT s.epoch, l.name, {cols}, s.grad_hist FROM layer_stats s JOIN run_layers l "
            "ON l.run_id = s.run_id AND l.layer = s.layer WHERE s.run_id = ? ORDER BY 1, 2",
            (run_id,),
        ).fetchall()
    out = {}
    for row in rows:
        values = dict(zip(COMPARED, row[2:-1], strict=True))
        values["grad_hist"] = row[-1]
        out[(row[0], row[1])] = values
    return out


def hist_counts(blob: object) -> np.ndarray:
    """A stored histogram's counts (HIST_SLOTS little-endian int32), zeros when absent."""
    if blob is None:
        return np.zeros(HIST_SLOTS, dtype=np.int64)
    return np.frombuffer(bytes(blob)[: 4 * HIST_SLOTS], dtype="<i4").astype(np.int64)


def assert_same_statistics(
    db: Path, a: str, b: str, *, rtol: float = 1e-5, atol: float = 1e-9, hist_slack: int = 0
) -> int:
    """Every statistic of every (epoch, layer) of run `a` equals run `b`'s within rtol (and the
    histograms' counts within `hist_slack` in all). Returns how many values were compared."""
    left, right = stats(db, a), stats(db, b)
    assert left.keys() == right.keys() and left, (sorted(left)[:5], sorted(right)[:5])
    compared = 0
    for key, values in left.items():
        for field in COMPARED:
            x, y = values[field], right[key][field]
            assert (x is None) == (y is None), (key, field, x, y)
            if x is not None:
                assert np.isclose(x, y, rtol=rtol, atol=atol), (key, field, x, y)
                compared += 1
        diff = np.abs(hist_counts(values["grad_hist"]) - hist_counts(right[key]["grad_hist"])).sum()
        assert diff <= hist_slack, (key, "grad_hist", diff)
    return compared
