"""The red team's holes (issue 14), one test (or a few) per item: hostile text, ranges, option
values, CSV files, live WAL files, long imports, a replaced dashboard database."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from share_helpers import add_nonfinite_run, full_dump
from sqlalchemy import Engine
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.engine import make_engine
from gradscope.db.share.base import ImportRefused
from gradscope.db.share.export import export_runs, select_run_ids
from gradscope.db.share.importing import import_file
from gradscope.vocab.config import ConfigError, make_config
from gradscope.vocab.text import has_unsafe_chars

# One of each class gradscope.vocab.text escapes: C0 (ESC, BEL, CR), DEL, C1 (CSI), bidi overrides.
CONTROL_CLASSES = {
    "C0": ["\x1b", "\x07", "\r", "\x01"],
    "DEL": ["\x7f"],
    "C1": ["\x9b", "\x85", "\x9d"],
    "bidi": ["\u202e", "\u2066", "\u200f", "\u061c"],
}
CONTROLS = [c for chars in CONTROL_CLASSES.values() for c in chars]
ESCAPES = ["\x1b[2J", "\x1b]0;pwned\x07", "\x9b2J", "\x1bc"]


@pytest.fixture(scope="module")
def export_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid export (one run with non-finite statistics), made once."""
    folder = tmp_path_factory.mktemp("red")
    engine = make_engine(str(folder / "src.db"))
    add_nonfinite_run(engine, name="clean", status="completed")
    out = folder / "export.db"
    export_runs(engine, select_run_ids(engine), out)
    engine.dispose()
    return out


@pytest.fixture
def target(tmp_path: Path) -> Engine:
    engine = make_engine(str(tmp_path / "target.db"))
    yield engine
    engine.dispose()


def tampered(source: Path, folder: Path, sql: str, params: tuple = ()) -> Path:
    path = folder / f"bad{len(list(folder.glob('bad*')))}.db"
    shutil.copy(source, path)
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()
    return path


def refused(target: Engine, path: Path) -> str:
    before = full_dump(target)
    with pytest.raises(ImportRefused) as caught:
        import_file(target, path)
    assert full_dump(target) == before
    return str(caught.value)


# -- 1: terminal escape injection ---------------------------------------------------------------

# Every text column of the schema an attacker controls, and the configs' strings.
TEXT_COLUMNS = [
    ("runs", "name"),
    ("runs", "error"),
    ("runs", "worker"),
    ("runs", "sweep_name"),
    ("runs", "notes"),
    ("runs", "hostname"),
    ("runs", "torch_version"),
    ("runs", "device"),
    ("run_layers", "name"),
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    column=st.sampled_from(TEXT_COLUMNS + [("config", "dataset"), ("config", "label")]),
    control=st.sampled_from(CONTROLS),
    prefix=st.text(alphabet="abc xyz/", max_size=5),
)
def test_import_refuses_control_characters_in_every_text_column(
    export_file: Path, tmp_path_factory: pytest.TempPathFactory, column, control, prefix
) -> None:
    table, name = column
    if control == "\r" and column in {("runs", "error"), ("runs", "notes")}:
        return  # line breaks (\r too) are text in notes and errors: stored and imported
    folder = tmp_path_factory.mktemp("fuzz")
    engine = make_engine(str(folder / "target.db"))
    value = f"{prefix}{control}x"
    if table == "config":
        # Both the config string and its denormalised column, so only the character is wrong.
        shown = f"csv:/d/{value}" if name == "dataset" else value
        sql = f"UPDATE runs SET config = json_set(config, '$.{name}', ?)"
        params: tuple = (shown,)
        path = tampered(export_file, folder, sql, params)
        if name == "dataset":
            conn = sqlite3.connect(path)
            conn.execute("UPDATE runs SET dataset = ?", (shown,))
            conn.commit()
            conn.close()
    else:
        path = tampered(export_file, folder, f"UPDATE {table} SET {name} = ?", (value,))
    message = refused(engine, path)
    where = "runs" if table == "config" else table
    assert f"{where} (run " in message  # table and run named
    assert name in message and "control characters" in message
    assert control not in message  # the refusal itself is printable
    engine.dispose()


def test_error_and_notes_may_hold_newlines(
    export_file: Path, target: Engine, tmp_path: Path
) -> None:
    path = tampered(export_file, tmp_path, "UPDATE runs SET error = ?", ("line 1\n\tline 2",))
    report = import_file(target, path)
    assert len(report.to_json()["added"]) == 1


@pytest.mark.parametrize("control", CONTROLS)
def test_names_from_cli_and_form_refuse_every_control_class(control: str) -> None:
    for field in ("name", "label"):
        with pytest.raises(ConfigError, match=f"{field}: must not contain control"):
            make_config({field: f"a{control}b"})
    with pytest.raises(ConfigError, match="dataset: must not contain control"):
        make_config({"dataset": f"csv:/tmp/a{control}.csv"})


def test_sweep_names_refuse_c1_and_bidi() -> None:
    from gradscope.vocab.sweep import sweep_name_of

    for control in ("\x9b", "\u202e", "\x7f"):
        with pytest.raises(ConfigError):
            sweep_name_of(f"sweep{control}")


def _forge_hostile_run(db: Path) -> str:
    """A run whose texts hold escapes, written straight into the file as a hostile tool would
    (the CLI must print safely whatever a database holds, imported or not)."""
    engine = make_engine(str(db))
    run_id = add_nonfinite_run(engine, name="ok", status="failed")
    engine.dispose()
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE runs SET name = ?, error = ?, dataset = ?, config = json_set(config, '$.label', ?)",
        tuple(f"x{e}y" for e in ESCAPES),
    )
    conn.commit()
    conn.close()
    return run_id


@pytest.mark.parametrize("command", [["runs"], ["show"]])
def test_cli_prints_database_text_escaped(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "hostile.db"
    run_id = _forge_hostile_run(db)
    args = [*command, *([run_id] if command == ["show"] else []), "--db", str(db)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert not has_unsafe_chars(result.output.replace("\n", ""))
    assert "\\x1b" in result.output  # shown, not obeyed


# -- 8: ranges ----------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("UPDATE epoch_metrics SET test_acc = 7.5", "test_acc is 7.5"),
    ("UPDATE epoch_metrics SET train_acc = -3", "train_acc is -3.0"),
    ("UPDATE runs SET final_test_acc = 2", "final_test_acc is 2.0"),
    ("UPDATE epoch_metrics SET seconds = -1e300", "seconds is -1e+300"),
    ("UPDATE epoch_metrics SET seconds = 9e999", "seconds is inf"),
    ("UPDATE layer_stats SET saturated_frac = 42", "saturated_frac is 42.0"),
    ("UPDATE layer_stats SET dead_frac = -7", "dead_frac is -7.0"),
    ("UPDATE decision_grids SET x_min = 5, x_max = -5", "x_min 5.0 is not below x_max -5.0"),
    ("UPDATE decision_grids SET y_max = y_min", "is not below y_max"),
]


@pytest.mark.parametrize(("sql", "phrase"), OUT_OF_RANGE, ids=[p for _, p in OUT_OF_RANGE])
def test_import_refuses_out_of_range_values(
    export_file: Path, target: Engine, tmp_path: Path, sql: str, phrase: str
) -> None:
    message = refused(target, tampered(export_file, tmp_path, sql))
    assert phrase in message


def test_import_refuses_out_of_range_on_postgresql(
    export_file: Path, pg_url: str, tmp_path: Path
) -> None:
    engine = make_engine(pg_url)
    try:
        path = tampered(export_file, tmp_path, "UPDATE epoch_metrics SET test_acc = 7.5")
        assert "test_acc is 7.5" in refused(engine, path)
        assert "control characters" in refused(
            engine, tampered(export_file, tmp_path, "UPDATE runs SET error = ?", ("\x1b[2J",))
        )
    finally:
        engine.dispose()


# -- 7: no traceback from any option value ------------------------------------------------------

BAD_OPTIONS = [
    (["runs", "--db", "mysql://user:secret@host/db"], "unsupported database URL scheme 'mysql'"),
    (["runs", "--db", ":::://"], "is not a database URL or path"),
    (["runs", "--db", "postgresql+psycopg2://u@h/d"], "unsupported database URL scheme"),
    (["worker", "--stale-after", "inf"], "--stale-after"),
    (["worker", "--poll", "inf"], "--poll"),
    (["worker", "--poll", "nan"], "--poll"),
    (["worker", "--heartbeat", "1e308"], "--heartbeat"),
]


@pytest.mark.parametrize(("args", "phrase"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_values_are_one_line_errors(
    tmp_path: Path, args: list[str], phrase: str
) -> None:
    if "--db" not in args:
        args = [*args, "--db", str(tmp_path / "w.db"), "--exit-when-idle"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert phrase in " ".join(result.output.split())
    assert "secret" not in result.output
    assert not (tmp_path / "w.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("command", ["current", "upgrade"])
def test_schema_commands_on_a_file_that_is_not_a_database(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database, just text " * 40)
    result = CliRunner().invoke(app, ["db", command, "--db", str(bad)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "file is not a database" in result.output
    assert bad.read_bytes() == b"not a database, just text " * 40


# -- 5 (+ issue 10 item 5): CSV files read with bounded memory, checked before a run exists ---


def _csv(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_a_bom_does_not_hide_the_label_column(tmp_path: Path) -> None:
    from gradscope.runner.datasets import raw_data

    # The label column first: a BOM used to become part of its name.
    rows = "".join(f"{i % 2},{i / 10},{-i / 7}\n" for i in range(40))
    path = _csv(tmp_path / "bom.csv", "label,x1,x2\n" + rows, bom=True)
    x, y = raw_data(make_config({"dataset": f"csv:{path}"}))
    assert x.shape == (40, 2) and set(y) == {0, 1}


def test_the_header_is_checked_before_the_body_is_read(tmp_path: Path) -> None:
    import tracemalloc

    from gradscope.runner.datasets import raw_data
    from gradscope.vocab.csv_files import DatasetError, check_csv

    path = _csv(tmp_path / "big.csv", "a,b,c\n" + "1,2,3\n" * 500_000)  # 3 MB, no label
    tracemalloc.start()
    with pytest.raises(DatasetError, match="no column named 'label'"):
        raw_data(make_config({"dataset": f"csv:{path}"}))
    with pytest.raises(DatasetError, match="no column named 'label'"):
        check_csv(str(path), "label")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000  # kilobytes, not the file


def test_size_and_row_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradscope.runner import datasets
    from gradscope.runner.datasets import DatasetError, raw_data
    from gradscope.vocab.csv_files import MAX_CSV_MB_ENV

    path = _csv(tmp_path / "d.csv", "x,label\n" + "0.5,1\n0.25,0\n" * 100_000)  # 1.2 MB
    cfg = make_config({"dataset": f"csv:{path}"})
    monkeypatch.setenv(MAX_CSV_MB_ENV, "1")
    with pytest.raises(DatasetError, match=r"at most 1 MB \(--max-csv-mb\)"):
        raw_data(cfg)
    monkeypatch.setenv(MAX_CSV_MB_ENV, "2")
    monkeypatch.setattr(datasets, "MAX_CSV_ROWS", 1000)
    with pytest.raises(DatasetError, match="more than 1,000 data rows"):
        raw_data(cfg)


def test_empty_label_is_refused() -> None:
    with pytest.raises(ConfigError, match="label"):
        make_config({"dataset": "csv:/x.csv", "label": ""})


BAD_CSVS = [
    (None, "dataset: CSV file not found: data.csv"),
    ("a,b\n1,0\n2,1\n", "no column named 'label'"),
    ("a,label\n1,0\n2,3\n", "must hold only 0 and 1 (line 3)"),
    ("a,label\n1,0\nx,1\n", "every column must be numeric (line 3 is not)"),
    ("a,label\n1,0\n2\n", "line 3 has a different number of columns"),
]


@pytest.mark.parametrize(("text", "phrase"), BAD_CSVS, ids=[p for _, p in BAD_CSVS])
@pytest.mark.parametrize("command", ["train", "submit"])
def test_train_and_submit_refuse_a_bad_csv_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, text: str | None, phrase: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if text is not None:
        _csv(tmp_path / "data.csv", text)
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [command, "--db", str(db), "--dataset", "csv:data.csv"])
    assert result.exit_code == 2, result.output
    assert phrase in " ".join(result.output.split())
    assert not db.exists()  # nothing written, not even an empty database


def test_train_refuses_a_bad_csv_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    from gradscope.db.queries import list_runs

    result = CliRunner().invoke(
        app, ["train", "--db", pg_url, "--dataset", f"csv:{tmp_path / 'gone.csv'}"]
    )
    assert result.exit_code == 2 and "CSV file not found" in result.output
    engine = make_engine(pg_url)
    assert list_runs(engine, None, None) == []
    engine.dispose()


# -- 3: a live WAL database imports as it reads --------------------------------------------------


def _live_wal_source(folder: Path) -> tuple[Engine, Path]:
    """A gradscope database being written: its runs sit in the -wal (no checkpoint yet)."""
    from sqlalchemy import event

    path = folder / "live.db"
    make_engine(str(path)).dispose()  # the schema, checkpointed into the main file
    engine = make_engine(str(path))
    event.listen(engine, "connect", lambda c, _r: c.execute("PRAGMA wal_autocheckpoint=0"))
    add_nonfinite_run(engine, name="live one", status="completed")
    add_nonfinite_run(engine, name="live two", status="diverged")
    return engine, path


def _runs_cli(db: str) -> dict[str, str]:
    import json

    result = CliRunner().invoke(app, ["runs", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    return {r["id"]: r["status"] for r in json.loads(result.output)}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_live_wal_database_imports_as_it_reads(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    live, path = _live_wal_source(tmp_path)
    try:
        assert Path(f"{path}-wal").stat().st_size > 0
        main_only = tmp_path / "main-only.db"
        shutil.copy(path, main_only)  # what the old private copy saw: no runs at all
        assert sqlite3.connect(main_only).execute("SELECT count(*) FROM runs").fetchone() == (0,)
        expected = _runs_cli(str(path))
        assert sorted(expected.values()) == ["completed", "diverged"]

        url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
        target = make_engine(url or str(tmp_path / "target.db"))
        report = import_file(target, path).to_json()
        assert sorted(r["id"] for r in report["added"]) == sorted(expected)
        assert report["refused"] == []
        assert _runs_cli(url or str(tmp_path / "target.db")) == expected
        target.dispose()
    finally:
        live.dispose()


# -- 2: a long import never fails someone else's run ---------------------------------------------


@pytest.fixture(scope="module")
def big_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from share_helpers import make_big_export

    path = tmp_path_factory.mktemp("big") / "big.db"
    make_big_export(str(path), runs=100)  # 51,000 rows: several seconds to import
    return path


@pytest.mark.slow
def test_a_run_keeps_training_through_a_long_import(
    big_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SQLite's busy timeout shrunk to 1 s (30 s in production), a run that records an
    epoch every few milliseconds while a 51,000-row import runs: the old single-transaction
    import held the lock for several seconds and the run failed with 'database is locked'."""
    import threading
    import time

    from worker_helpers import wait_for

    from gradscope.db import engine as engine_module
    from gradscope.db.lifecycle import cancel_runs
    from gradscope.db.queries import list_runs
    from gradscope.runner.foreground import train_foreground

    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 1000)
    db = str(tmp_path / "shared.db")
    trainer, importer = make_engine(db), make_engine(db)
    values = {"depth": "2", "width": "8", "samples": "128", "epochs": "100000", "name": "mine"}
    outcome: list[tuple[str, str]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(train_foreground(trainer, dict(values), progress=False))
    )
    thread.start()
    try:
        run = wait_for(lambda: [r for r in list_runs(importer, None, None) if r.epochs_done], 60)[0]
        before = run.epochs_done
        started = time.monotonic()
        report = import_file(importer, big_export)
        took = time.monotonic() - started
        during = next(r for r in list_runs(importer, None, None) if r.id == run.id).epochs_done
    finally:
        cancel_runs(importer, [r.id for r in list_runs(importer, ["running"], None)])
        thread.join(60)
    assert outcome and outcome[0] == (run.id, "cancelled"), outcome  # not "failed"
    assert len(report.added) == 100
    assert report.longest_write_s < 1.0, report.longest_write_s
    assert during > before, (before, during, took)  # it trained while the import ran
    trainer.dispose()
    importer.dispose()


# -- 4: the dashboard notices a deleted or replaced database file ----------------------------


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_dashboard_notices_a_replaced_or_deleted_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    import os

    from dashboard_helpers import add_run, open_app

    from gradscope.db import frames

    db = tmp_path / "runs.db"
    engine = make_engine(str(db))
    add_run(engine, name="old run")
    engine.dispose()
    at = open_app(monkeypatch, db)

    def notice() -> str:
        return " ".join(w.value for w in at.warning if "database file" in w.value)

    assert notice() == ""

    if how == "replaced":
        other = make_engine(str(tmp_path / "other.db"))
        add_run(other, name="new run")
        other.dispose()
        os.replace(tmp_path / "other.db", db)  # mv other.db runs.db
    else:
        db.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    at.run()
    assert f"was {how}" in notice(), notice()

    # The New run form refuses to write into the unlinked file.
    (button,) = [b for b in at.form_submit_button if b.label == "Queue run"]
    button.click().run()
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "Nothing was written" in errors, errors
    if how == "replaced":
        check = make_engine(str(db))
        assert list(frames.runs(check)["name"]) == ["new run"]  # no queued run added
        check.dispose()
    else:
        assert not db.exists()

    at.button(key="reconnect_database").click().run()
    assert notice() == ""
    if how == "replaced":
        shown = " ".join(str(df.value.to_dict()) for df in at.dataframe)
        assert "new run" in shown and "old run" not in shown


# -- 9: small validation gaps -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["runs", "--limit", "0"], "--limit"),
        (["runs", "--status", "bogus"], "'bogus' is not a run status; one of: queued"),
        (["export", "out.db", "--status", "bogus"], "'bogus' is not a run status"),
        (["export-csv", "out", "--status", "done"], "'done' is not a run status"),
    ],
)
def test_listing_options_are_checked(tmp_path: Path, args: list[str], phrase: str) -> None:
    db = tmp_path / "runs.db"
    make_engine(str(db)).dispose()
    result = CliRunner().invoke(app, [*args, "--db", str(db)], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert phrase in " ".join(result.output.split())


def test_dashboard_says_an_unresolvable_host_is_invalid(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(
        app, ["dashboard", "--db", str(db), "--host", "no such host!", "--no-worker"]
    )
    assert result.exit_code == 2
    assert "--host 'no such host!' is not an address or host name" in result.output
    assert "port" not in result.output.split("(")[0]
    assert not db.exists()


def test_duplicate_sweep_values_collapse_and_commas_can_be_escaped(tmp_path: Path) -> None:
    from gradscope.vocab.sweep import plan_sweep

    path = tmp_path / "a,b" / "d.csv"  # a folder with a comma in its name
    escaped = str(path).replace(",", "\\,")
    plan = plan_sweep({"lr": "1e-3,0.001,0.01", "dataset": f"csv:{escaped},moons"})
    lrs = sorted({s.config["lr"] for s in plan.specs})
    datasets = sorted({s.config["dataset"] for s in plan.specs})
    assert lrs == [0.001, 0.01] and plan.size == 4
    assert datasets == [f"csv:{path}", "moons"]
    assert any("lr: dropped duplicate value(s) 0.001 (= 1e-3)" in n for n in plan.notes)


def test_sweep_cli_prints_the_collapse_note(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--db", str(db), "--lr", "1e-3,0.001"])
    assert result.exit_code == 0, result.output
    assert "queued 1 runs" in result.output
    assert "note: lr: dropped duplicate value(s) 0.001 (= 1e-3)" in result.output


# -- 10: a network dashboard is safe by default ------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"depth": 10, "width": 32},
        {"depth": 1, "width": 5, "dataset": "breast_cancer"},
        {"depth": 3, "width": 7, "arch": "resnet"},
    ],
)
def test_parameter_count_matches_the_model(values: dict) -> None:
    from gradscope.runner.networks import build_model
    from gradscope.vocab.budget import input_features, parameter_count

    cfg = make_config(values)
    model = build_model(cfg, input_features(cfg))
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_queued_runs_must_fit_the_parameter_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from gradscope.vocab.budget import MAX_PARAMS_ENV

    monkeypatch.setenv(MAX_PARAMS_ENV, "10000000")  # restored after --max-params sets it
    db = tmp_path / "runs.db"
    runner = CliRunner()
    huge = runner.invoke(app, [command, "--db", str(db), "--depth", "200", "--width", "4096"])
    assert huge.exit_code == 2, huge.output
    said = " ".join(huge.output.split())  # errors wrap at 80 columns
    assert "3,339,497,473 parameters" in said and "at most 10,000,000" in said
    small = [command, "--db", str(db), "--depth", "20", "--width", "64", "--max-params", "1000"]
    assert "at most 1,000 (--max-params)" in " ".join(runner.invoke(app, small).output.split())
    assert not db.exists()


def test_loopback_detection() -> None:
    from gradscope.cli.dashboard_commands import loopback_only

    assert loopback_only("127.0.0.1") and loopback_only("localhost") and loopback_only("::1")
    assert not loopback_only("0.0.0.0")


def _form(at, **values: object) -> None:  # noqa: ANN001
    for key, value in values.items():
        widget = at.selectbox(key=f"new_run_{key}") if key == "dataset" else None
        if widget is not None:
            widget.set_value(value)
        elif isinstance(value, int):
            at.number_input(key=f"new_run_{key}").set_value(value)
        else:
            at.text_input(key=f"new_run_{key}").set_value(value)
    (button,) = [b for b in at.form_submit_button if b.label == "Queue run"]
    button.click().run()


def _sidebar_errors(at) -> str:  # noqa: ANN001
    return " ".join(e.value for e in at.sidebar.error)


def test_exposed_dashboard_is_read_only_without_allow_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dashboard_helpers import add_run, open_app

    from gradscope.dashboard import db_gateway
    from gradscope.db.errors import StorageError
    from gradscope.vocab.protocol import access_env

    db = tmp_path / "runs.db"
    engine = make_engine(str(db))
    run_id = add_run(engine, name="kept")
    for key, value in access_env(exposed=True, allow_writes=False, data_dir=None).items():
        monkeypatch.setenv(key, value)
    at = open_app(monkeypatch, db)
    assert not at.form_submit_button  # no New run / New sweep forms
    assert any("Read-only" in c.value for c in at.sidebar.caption)
    with pytest.raises(StorageError, match="read-only"):
        db_gateway.delete_runs([run_id])
    with pytest.raises(StorageError, match="read-only"):
        db_gateway.cancel_runs([run_id])
    assert len(list_names(engine)) == 1
    engine.dispose()


def list_names(engine: Engine) -> list[str]:
    from gradscope.db import frames

    return list(frames.runs(engine)["name"])


@pytest.mark.parametrize("data_dir", [False, True])
def test_exposed_dashboard_limits_csv_paths_to_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: bool
) -> None:
    from dashboard_helpers import open_app

    from gradscope.vocab.protocol import access_env

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "ok.csv").write_text("x,label\n1,0\n2,1\n3,0\n4,1\n")
    secret = tmp_path / "secret.csv"
    secret.write_text("x,label\n1,0\n")
    env = access_env(exposed=True, allow_writes=True, data_dir=folder if data_dir else None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "runs.db"
    engine = make_engine(str(db))
    at = open_app(monkeypatch, db)
    _form(at, dataset="csv file", csv_path=str(secret))
    errors = _sidebar_errors(at)
    if data_dir:
        assert "must lie in the data folder" in errors, errors
        _form(at, dataset="csv file", csv_path="ok.csv")  # relative: inside the folder
        assert _sidebar_errors(at) == ""
        assert len(list_names(engine)) == 1
    else:
        assert "cannot be named from this dashboard" in errors, errors
        assert list_names(engine) == []
    engine.dispose()


def test_the_form_refuses_a_model_over_the_budget(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dashboard_helpers import open_app

    db = tmp_path / "runs.db"
    engine = make_engine(str(db))
    at = open_app(monkeypatch, db)
    _form(at, depth=200, width=4096)
    assert "3,339,497,473 parameters; queued runs may have at most 10,000,000" in _sidebar_errors(
        at
    )
    assert list_names(engine) == []
    engine.dispose()
