"""Free metrics (`run.log`): stored per step and per epoch with non-finite values kept, refused
with a clear error when a name, value, step or count is wrong, shown by `gradscope show`,
exported (db, CSV) and imported, checked on import, deleted with their run, and paired by name
for charts."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
from sqlalchemy import select
from torch import nn
from typer.testing import CliRunner

import gradscope
import gradscope.api.logged as api_metrics
import gradscope.vocab.metrics as metrics_vocab
from gradscope.cli.main import app
from gradscope.db.engine import make_engine
from gradscope.db.lifecycle import delete_runs
from gradscope.db.models import RunMetricModel
from gradscope.db.share.base import ImportRefused
from gradscope.db.share.export import export_runs
from gradscope.db.share.importing import import_file
from gradscope.db.share.table_files import export_tables
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.fields import MAX_METRIC_NAME_CHARS
from gradscope.vocab.metrics import MetricError, metric_panels, split_of


def _train(run: gradscope.Run, epochs: int = 2, steps: int = 3) -> nn.Module:
    """A 4-class model: per-step loss (a tensor) and learning rate, per-epoch test metrics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer)
    x, y = torch.randn(32, 5), torch.randint(0, 4, (32,))
    for epoch in range(epochs):
        for _ in range(steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log({"train/loss": loss, "lr": 0.1})
        run.log({"test/loss": loss.detach() + 1, "test/acc": 0.25 * (epoch + 1)})
        run.log_epoch(train_loss=loss, grad_clip=float("inf") if epoch else float("nan"))
    return model


def _metrics(url: str, run_id: str) -> list[tuple]:
    engine = make_engine(url)
    m = RunMetricModel
    with transaction(engine) as conn, orm(conn) as s:
        got = s.execute(
            select(m.name, m.step, m.epoch, m.value).where(m.run_id == run_id).order_by(m.id)
        ).all()
    engine.dispose()
    return [tuple(r) for r in got]


def test_log_stores_per_step_and_per_epoch_values_non_finite_kept(database: str) -> None:
    with gradscope.init(db=database, name="free", quiet=True) as run:
        _train(run)
    got = _metrics(database, run.id)
    by_name: dict[str, list[tuple]] = {}
    for name, step, epoch, value in got:
        by_name.setdefault(name, []).append((step, epoch, value))
    # Per step: the optimizer's step count, in the epoch in progress.
    assert [(s, e) for s, e, _ in by_name["train/loss"]] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 2),
        (5, 2),
        (6, 2),
    ]
    assert all(0.5 < v < 3 for _, _, v in by_name["train/loss"])  # tensors were read
    # Once per epoch, before log_epoch: one value per epoch, at the epoch's last step.
    assert [(s, e, v) for s, e, v in by_name["test/acc"]] == [(3, 1, 0.25), (6, 2, 0.5)]
    # log_epoch's extra keyword: a free metric of that epoch; NaN is NULL, infinity kept.
    (s1, e1, nan), (s2, e2, inf) = by_name["grad_clip"]
    assert (e1, e2) == (1, 2) and nan is None and inf == math.inf


def test_bad_metrics_are_refused_at_the_call_with_what_is_wrong(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = gradscope.init(db=str(db_path), quiet=True)
    for bad, message in [
        ({"": 1.0}, "empty"),
        ({" loss": 1.0}, "space"),
        ({"x" * 101: 1.0}, "at most 100"),
        ({"loss\x1b[2J": 1.0}, "control characters"),
        ({"a\u200bb": 1.0}, "control characters"),  # zero-width space: invisible
        ({3: 1.0}, "must be text"),
    ]:
        with pytest.raises(MetricError, match=message):
            run.log(bad)
    with pytest.raises(TypeError, match="'acc' must be a number"):
        run.log({"acc": "high"})
    with pytest.raises(MetricError, match=r"shape \(3,\)"):
        run.log({"loss": torch.ones(3)})
    with pytest.raises(TypeError, match="dict of name"):
        run.log([("loss", 1.0)])  # type: ignore[arg-type]
    for step in (-1, True, 1.5):
        with pytest.raises(MetricError, match="step"):
            run.log({"loss": 1.0}, step=step)  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="per step"):
        run.log({f"m{i}": 1.0 for i in range(201)})
    monkeypatch.setattr(api_metrics, "MAX_METRIC_NAMES", 2)
    run.log({"a": 1.0, "b": 2.0})
    with pytest.raises(MetricError, match="at most 2 distinct"):
        run.log({"c": 1.0})
    monkeypatch.setattr(api_metrics, "MAX_METRIC_ROWS", 3)
    with pytest.raises(MetricError, match="at most 3 values"):
        run.log({"a": 1.0, "b": 2.0})
    run.finish()
    # A refused call keeps none of its values; the accepted one is stored, numpy scalars too.
    assert [r[0] for r in _metrics(str(db_path), run.id)] == ["a", "b"]


def test_default_step_without_watch_counts_log_calls_and_explicit_steps_are_kept(
    db_path: Path,
) -> None:
    import numpy as np

    with gradscope.init(db=str(db_path), quiet=True) as run:
        run.log({"a": 1})
        run.log({"a": np.float32(2.5)})
        run.log({"a": np.array(3.0)}, step=np.int64(100))
        assert run.step == 3
    assert _metrics(str(db_path), run.id) == [
        ("a", 0, 1, 1.0),
        ("a", 1, 1, 2.5),
        ("a", 100, 1, 3.0),
    ]


def test_values_logged_in_bulk_are_flushed_before_the_epoch_ends(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FLUSH_ROWS rows are written by the measuring thread without waiting for log_epoch
    (so a long epoch's curve is visible live and memory stays bounded)."""
    monkeypatch.setattr("gradscope.api.run.FLUSH_ROWS", 10)
    run = gradscope.init(db=str(db_path), quiet=True)
    for i in range(12):
        run.log({"x": torch.tensor(float(i))})
    run._wait()
    assert len(_metrics(str(db_path), run.id)) >= 10
    run.finish()
    assert [r[3] for r in _metrics(str(db_path), run.id)] == [float(i) for i in range(12)]


def test_show_prints_and_json_holds_the_metrics(db_path: Path) -> None:
    with gradscope.init(db=str(db_path), name="shown", quiet=True) as run:
        _train(run)
    runner = CliRunner()
    out = runner.invoke(app, ["show", run.id[:8], "--db", str(db_path), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    metrics = doc["metrics"]
    assert set(metrics) == {"train/loss", "lr", "test/loss", "test/acc", "grad_clip"}
    assert metrics["test/acc"]["value"] == [0.25, 0.5]
    assert metrics["test/acc"]["epoch"] == [1, 2]
    assert metrics["grad_clip"]["value"] == [None, "inf"]  # NaN as null, infinity as text
    text = runner.invoke(app, ["show", run.id[:8], "--db", str(db_path)])
    assert text.exit_code == 0
    assert "Logged metrics" in text.stdout and "train/loss" in text.stdout


def test_metrics_travel_through_export_import_and_csv(db_path: Path, tmp_path: Path) -> None:
    with gradscope.init(db=str(db_path), name="shared", quiet=True) as run:
        _train(run)
    engine = make_engine(str(db_path))
    export_runs(engine, [run.id], tmp_path / "out.db")
    target = tmp_path / "theirs.db"
    report = import_file(make_engine(str(target)), tmp_path / "out.db")
    assert [r.id for r in report.added] == [run.id]
    assert _metrics(str(target), run.id) == _metrics(str(db_path), run.id)
    # Imported again (and back into the source): the same content, already present.
    again = import_file(make_engine(str(db_path)), tmp_path / "out.db")
    assert [r.id for r in again.already_present] == [run.id]
    paths = export_tables(engine, [run.id], tmp_path / "tables")
    assert [p.name for p in paths][-1] == "metrics.csv"
    table = pd.read_csv(tmp_path / "tables" / "metrics.csv")
    assert list(table.columns) == ["run_id", "run_name", "name", "step", "epoch", "value"]
    assert len(table) == 6 + 2 + 2 + 2 + 6  # train/loss, test/*, grad_clip, lr
    clip = table[table["name"] == "grad_clip"]["value"].tolist()
    assert math.isnan(clip[0]) and clip[1] == math.inf


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE run_metrics SET name = 'a' || char(27) || 'b' WHERE name = 'lr'", "control"),
        ("UPDATE run_metrics SET epoch = 4 WHERE name = 'lr'", "outside the run's 1..3"),
        ("UPDATE run_metrics SET step = NULL, epoch = NULL WHERE name = 'lr'", "step or an epoch"),
        ("UPDATE run_metrics SET step = -5 WHERE name = 'lr'", "step -5"),
        ("UPDATE run_metrics SET value = 'x' WHERE name = 'lr'", "must be a number"),
    ],
)
def test_import_refuses_a_forged_metric_row(
    db_path: Path, tmp_path: Path, sql: str, reason: str
) -> None:
    with gradscope.init(db=str(db_path), quiet=True) as run:
        _train(run)
    export_runs(make_engine(str(db_path)), [run.id], tmp_path / "out.db")
    with sqlite3.connect(tmp_path / "out.db") as conn:
        conn.execute(sql)
    with pytest.raises(ImportRefused, match=reason) as refused:
        import_file(make_engine(str(tmp_path / "t.db")), tmp_path / "out.db")
    assert refused.value.problems[0].startswith("run_metrics")


@pytest.mark.parametrize(
    "name",
    ["x" * (MAX_METRIC_NAME_CHARS + 1), "a\u202eb", "bell\x07", " lr", "lr "],
    ids=["too-long", "bidi", "control", "leading-space", "trailing-space"],
)
def test_a_name_run_log_refuses_is_refused_on_import(
    db_path: Path, tmp_path: Path, name: str
) -> None:
    """One definition of a valid name (gradscope.vocab.metrics): what run.log refuses, forged
    into a shared file by hand, is refused on import as well, naming the table and the run."""
    with gradscope.init(db=str(db_path), quiet=True) as run:
        with pytest.raises(MetricError):
            run.log({name: 1.0})
        _train(run)
    export_runs(make_engine(str(db_path)), [run.id], tmp_path / "out.db")
    with sqlite3.connect(tmp_path / "out.db") as conn:
        conn.execute("UPDATE run_metrics SET name = ? WHERE name = 'lr'", (name,))
    with pytest.raises(ImportRefused) as refused:
        import_file(make_engine(str(tmp_path / "t.db")), tmp_path / "out.db")
    assert refused.value.problems[0].startswith(f"run_metrics (run {run.id[:8]}")
    assert "name" in refused.value.problems[0]
    assert _metrics(str(tmp_path / "t.db"), run.id) == []  # nothing of the run was imported


@pytest.mark.parametrize(("extra_names", "refused"), [(0, False), (1, True)])
def test_import_rechecks_the_limit_on_metric_names_per_run(
    db_path: Path, tmp_path: Path, extra_names: int, refused: bool
) -> None:
    """A file written by hand may hold what run.log never lets through: a run with more than
    MAX_METRIC_NAMES distinct names is refused on import (one line for the run), one with
    exactly that many is imported."""
    with gradscope.init(db=str(db_path), quiet=True) as run:
        _train(run)
    export_runs(make_engine(str(db_path)), [run.id], tmp_path / "out.db")
    with sqlite3.connect(tmp_path / "out.db") as conn:
        have = conn.execute("SELECT COUNT(DISTINCT name) FROM run_metrics").fetchone()[0]
        more = api_metrics.MAX_METRIC_NAMES - have + extra_names
        conn.executemany(
            "INSERT INTO run_metrics (run_id, name, step, epoch, value) VALUES (?, ?, 1, 1, 0.5)",
            [(run.id, f"forged/{i}") for i in range(more)],
        )
    target = make_engine(str(tmp_path / "t.db"))
    if not refused:
        assert [r.id for r in import_file(target, tmp_path / "out.db").added] == [run.id]
        assert len({r[0] for r in _metrics(str(tmp_path / "t.db"), run.id)}) == 500
        return
    with pytest.raises(ImportRefused, match="more than 500 distinct metric names") as err:
        import_file(target, tmp_path / "out.db")
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith("run_metrics")


def test_import_rechecks_the_limit_on_metric_values_per_run(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit on values per run, lowered here so the file stays small: one row over it is
    refused on import."""
    with gradscope.init(db=str(db_path), quiet=True) as run:
        _train(run)
    export_runs(make_engine(str(db_path)), [run.id], tmp_path / "out.db")
    with sqlite3.connect(tmp_path / "out.db") as conn:
        rows = conn.execute("SELECT COUNT(*) FROM run_metrics").fetchone()[0]
    monkeypatch.setattr(metrics_vocab, "MAX_METRIC_ROWS", rows)
    target = make_engine(str(tmp_path / "t.db"))
    assert [r.id for r in import_file(target, tmp_path / "out.db").added] == [run.id]
    monkeypatch.setattr(metrics_vocab, "MAX_METRIC_ROWS", rows - 1)
    with pytest.raises(ImportRefused, match=f"more than {rows - 1} metric values"):
        import_file(make_engine(str(tmp_path / "u.db")), tmp_path / "out.db")


def test_deleting_a_run_deletes_its_metrics(db_path: Path) -> None:
    with gradscope.init(db=str(db_path), quiet=True) as run:
        run.log({"a": 1.0})
    engine = make_engine(str(db_path))
    delete_runs(engine, [run.id])
    assert _metrics(str(db_path), run.id) == []


def test_train_and_test_names_pair_into_one_chart() -> None:
    assert split_of("train/loss") == ("train", "loss")
    assert split_of("val_acc") == ("val", "acc")
    assert split_of("loss/test") == ("test", "loss")
    assert split_of("lr") is None and split_of("training_time") is None
    panels = metric_panels(["train/loss", "lr", "test/loss", "train_acc", "val_acc", "test/x"])
    assert panels == [
        ("loss", ["train/loss", "test/loss"]),
        ("lr", ["lr"]),
        ("acc", ["train_acc", "val_acc"]),
        ("test/x", ["test/x"]),
    ]
    # A name that happens to equal a pair's quantity stays its own chart.
    assert metric_panels(["loss", "train/loss", "test/loss"]) == [
        ("loss", ["loss"]),
        ("loss", ["train/loss", "test/loss"]),
    ]
