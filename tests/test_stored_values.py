"""One validation of every stored value (issue 24, item 9): what import accepts, pages can show;
what gradscope stores, import accepts. Names, notes and tags, a custom config's nesting, metric
ranges and error texts go through gradscope.vocab.stored_values both when stored and imported."""

from __future__ import annotations

import json
import shutil
import sqlite3
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.db.annotate import AnnotationError, edit_run, set_tags, tags_of
from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.queries import get_run
from gradscope.db.share.base import ImportRefused
from gradscope.db.share.export import export_runs, select_run_ids
from gradscope.db.share.importing import import_file
from gradscope.vocab.config import make_config
from gradscope.vocab.custom import CustomConfigError
from gradscope.vocab.records import RunSpec
from gradscope.vocab.stored_values import (
    MAX_CONFIG_DEPTH,
    MAX_TAGS_PER_RUN,
    StoredValueError,
    clean_tag,
    clean_tags,
    stored_text,
)

runner = CliRunner()
NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def nested(depth: int) -> dict:
    """A dict `depth` levels deep: {"k": {"k": ... {"k": 1}}}."""
    value: object = 1
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[return-value]


def exported(db: Path, folder: Path) -> Path:
    engine = make_engine(str(db))
    out = folder / "export.db"
    export_runs(engine, select_run_ids(engine), out)
    engine.dispose()
    return out


def imported(path: Path, folder: Path) -> list[str]:
    target = make_engine(str(folder / "target.db"))
    try:
        report = import_file(target, path)
        return [r.id for r in report.added]
    finally:
        target.dispose()


def api_run(db: Path, **init: object) -> str:
    with gradscope.init(db=str(db), **init) as run:  # type: ignore[arg-type]
        run.log_epoch(train_loss=0.5, test_acc=0.75)
    return run.id


# -- the rules themselves --------------------------------------------------------------------


def test_tags_are_stored_in_one_form_trimmed_visible_and_without_commas() -> None:
    assert clean_tag(NFD) == clean_tag(NFC) == NFC
    assert clean_tag("  padded\u00a0") == "padded"
    assert clean_tags([NFC, NFD, " café "]) == [NFC]
    for bad in ("a,b", "\u200d", "x\u200dy", "zero\u200bwidth", "\ufeffbom", "", "  ", "\x1b[2J"):
        with pytest.raises(StoredValueError):
            clean_tag(bad)
    with pytest.raises(StoredValueError, match="at most 50 tags"):
        clean_tags(f"t{i}" for i in range(MAX_TAGS_PER_RUN + 1))
    # Escaped, cut, kept on both backends: ESC, bidi and NUL become visible text.
    assert stored_text("bad \x1b[31m\u202e\x00 end\r\n\tat line") == (
        "bad \\x1b[31m\\u202e\\x00 end\r\n\tat line"
    )


def test_cli_and_api_store_one_form_of_each_tag_and_can_remove_a_padded_one(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    run_id = EpochWriter(engine).create_run(RunSpec(make_config({"depth": 2}).model_dump()))
    assert set_tags(engine, run_id, add=[NFC, NFD, " café "]) == [NFC]
    result = runner.invoke(app, ["tag", "--db", str(db_path), run_id, "zero\u200dwidth"])
    assert result.exit_code != 0 and "invisible character" in result.output
    # A tag stored padded by an older version is removed by what it looks like.
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO run_tags (run_id, tag) VALUES (?, ' old ')", (run_id,))
    assert set_tags(engine, run_id, remove=["old"]) == [NFC]
    with pytest.raises(AnnotationError, match="at most 50"):
        edit_run(engine, run_id, name="n", notes=None, tags=[f"t{i}" for i in range(60)])
    engine.dispose()


# -- import refuses what storing would refuse -------------------------------------------------


@pytest.fixture
def tagged_export(tmp_path: Path) -> Path:
    db = tmp_path / "source.db"
    engine = make_engine(str(db))
    run_id = EpochWriter(engine).create_run(RunSpec(make_config({"depth": 2}).model_dump()))
    EpochWriter(engine).finish_run(run_id, "completed", only_if_running=False)
    set_tags(engine, run_id, add=["one"])
    engine.dispose()
    return exported(db, tmp_path)


@pytest.mark.parametrize(
    ("tags", "phrase"),
    [
        ([f"t{i:03d}" for i in range(60)], "more than 50 tags"),
        (["a,b"], "comma"),
        ([" padded "], "trimmed"),
        ([NFD], "NFC"),
        (["\u200d"], "invisible"),
    ],
)
def test_import_refuses_tags_the_cli_would_refuse(
    tagged_export: Path, tmp_path: Path, tags: list[str], phrase: str
) -> None:
    with sqlite3.connect(tagged_export) as conn:
        run_id = conn.execute("SELECT id FROM runs").fetchone()[0]
        conn.executemany("INSERT INTO run_tags VALUES (?, ?)", [(run_id, t) for t in tags])
    with pytest.raises(ImportRefused) as caught:
        imported(tagged_export, tmp_path)
    assert phrase in str(caught.value)


def test_merged_tags_stop_at_the_limit(tagged_export: Path, tmp_path: Path) -> None:
    target_db = tmp_path / "target.db"
    shutil.copy(tagged_export, target_db)
    with sqlite3.connect(tagged_export) as conn:
        run_id = conn.execute("SELECT id FROM runs").fetchone()[0]
        conn.executemany(
            "INSERT INTO run_tags VALUES (?, ?)", [(run_id, f"file{i:02d}") for i in range(40)]
        )
    engine = make_engine(str(target_db))
    set_tags(engine, run_id, add=[f"mine{i:02d}" for i in range(30)])
    import_file(engine, tagged_export)
    assert len(tags_of(engine, [run_id])[run_id]) == MAX_TAGS_PER_RUN
    engine.dispose()


# -- nesting: refused when stored and imported, shown when accepted --------------------------


@pytest.mark.parametrize("depth", [MAX_CONFIG_DEPTH + 1, 500, 5_000])
def test_deep_custom_configs_are_refused_with_a_clear_error(db_path: Path, depth: int) -> None:
    with pytest.raises(CustomConfigError, match=f"more than {MAX_CONFIG_DEPTH} levels"):
        gradscope.init(db=str(db_path), config=nested(depth))


def test_a_config_at_the_depth_limit_is_shown_exported_and_imported(
    db_path: Path, tmp_path: Path
) -> None:
    run_id = api_run(db_path, config={"deep": nested(MAX_CONFIG_DEPTH - 1)})
    listed = runner.invoke(app, ["runs", "--db", str(db_path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)[0]["id"] == run_id
    shown = runner.invoke(app, ["show", "--db", str(db_path), run_id])
    assert shown.exit_code == 0, shown.output
    assert imported(exported(db_path, tmp_path), tmp_path) == [run_id]


def test_import_refuses_a_deeply_nested_custom_config(db_path: Path, tmp_path: Path) -> None:
    api_run(db_path, config={"a": 1})
    path = exported(db_path, tmp_path)
    with sqlite3.connect(path) as conn:
        config = json.dumps({"user": nested(500), "model": {}})
        conn.execute("UPDATE runs SET config = ?", (config,))
    with pytest.raises(ImportRefused, match="levels deep"):
        imported(path, tmp_path)


# -- what gradscope stores, import accepts ---------------------------------------------------


def test_a_percentage_accuracy_is_refused_when_logged(db_path: Path) -> None:
    with gradscope.init(db=str(db_path)) as run:
        with pytest.raises(ValueError, match=r"test_acc is 91.0; it must lie in \[0, 1\]"):
            run.log_epoch(test_acc=91.0)
        run.log_epoch(test_acc=0.91)
    assert get_run(make_engine(str(db_path)), run.id).test_acc == pytest.approx(0.91)


def test_hostile_error_texts_and_carriage_returns_are_stored_exported_and_imported(
    db_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError), gradscope.init(db=str(db_path), name=" spaced ") as run:
        raise RuntimeError("boom \x1b[2J\u202egnp.exe\x00 end")
    engine = make_engine(str(db_path))
    stored = get_run(engine, run.id)
    assert stored.status == "failed" and stored.name == "spaced"
    assert stored.error == "RuntimeError: boom \\x1b[2J\\u202egnp.exe\\x00 end"
    runner.invoke(app, ["note", "--db", str(db_path), run.id, "line one\r\nline two\r"])
    assert get_run(engine, run.id).notes == "line one\r\nline two\r"
    engine.dispose()
    assert imported(exported(db_path, tmp_path), tmp_path) == [run.id]
