"""Names, notes and tags on runs (gradscope.db.annotate, the CLI), creation order (`seq`), and how
annotations travel through export and import, also from a database written by schema 0001."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.annotate import AnnotationError, rename_run, set_notes, set_tags, tags_of
from gradscope.db.engine import SCHEMA_REVISION, make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.lifecycle import claim_next
from gradscope.db.migrate import upgrade
from gradscope.db.queries import get_run, list_runs
from gradscope.db.share.export import export_runs
from gradscope.db.share.importing import import_file
from gradscope.vocab.config import make_config
from gradscope.vocab.records import RunSpec

runner = CliRunner()
OLD_DB = Path(__file__).parent / "data" / "schema_0001.db"


def _specs(n: int) -> list[RunSpec]:
    return [
        RunSpec(make_config({"depth": 2, "width": 4, "seed": i}).model_dump()) for i in range(n)
    ]


def test_runs_created_together_keep_their_order_in_lists_and_the_queue(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    # Many runs in one insert share created_at; UUID order would shuffle them.
    ids = EpochWriter(engine).create_runs(_specs(12))
    listed = [r.id for r in list_runs(engine)]
    assert listed == ids  # created together: listed in creation order (newest batch first)
    claimed = [claim_next(engine, "w").run_ids[0] for _ in range(3)]
    assert claimed == ids[:3]
    later = EpochWriter(engine).create_runs(_specs(2))
    assert get_run(engine, later[0]).seq == get_run(engine, ids[-1]).seq + 1


def test_tags_notes_and_names_are_checked_and_stored(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    a, b = EpochWriter(engine).create_runs(_specs(2))
    assert set_tags(engine, a, add=["baseline", " good ", "baseline"]) == ["baseline", "good"]
    assert set_tags(engine, a, remove=["good"]) == ["baseline"]
    set_tags(engine, b, add=["good"])
    assert tags_of(engine, [a, b]) == {a: ["baseline"], b: ["good"]}
    assert [r.id for r in list_runs(engine, tags=["baseline"])] == [a]
    assert list_runs(engine, tags=["baseline", "good"]) == []
    assert rename_run(engine, a, "  first  ") == "first"
    assert set_notes(engine, a, "line one\n\tline two") == "line one\n\tline two"
    run = get_run(engine, a)
    assert (run.name, run.notes, run.tags) == ("first", "line one\n\tline two", ("baseline",))
    for bad in (
        lambda: rename_run(engine, a, "x\x1b[2J"),
        lambda: rename_run(engine, a, "n" * 201),
    ):
        with pytest.raises(AnnotationError):
            bad()
    with pytest.raises(AnnotationError):
        set_tags(engine, a, add=["ok", "t" * 65])
    with pytest.raises(AnnotationError):
        set_notes(engine, a, "bell\x07")
    assert get_run(engine, a).tags == ("baseline",)  # a refused batch writes nothing
    assert get_run(engine, a).name == "first"


def test_cli_tag_note_rename_delete(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    a, b = EpochWriter(engine).create_runs(_specs(2))
    db = ["--db", str(db_path)]
    assert runner.invoke(app, ["tag", a[:8], "keep", "v2", *db]).exit_code == 0
    assert runner.invoke(app, ["tag", a[:8], "v2", "--remove", *db]).exit_code == 0
    assert runner.invoke(app, ["note", a, "why this run", *db]).exit_code == 0
    assert runner.invoke(app, ["rename", a, "renamed", *db]).exit_code == 0
    bad = runner.invoke(app, ["rename", a, "evil\x1b]0;x\x07", *db])
    assert bad.exit_code == 2 and "control characters" in bad.output
    listed = runner.invoke(app, ["runs", "--tag", "keep", "--json", *db])
    assert [r["id"] for r in json.loads(listed.output)] == [a]
    run = get_run(engine, a)
    assert (run.name, run.notes, run.tags) == ("renamed", "why this run", ("keep",))
    # Without --yes: lists what would go, refuses, deletes nothing.
    dry = runner.invoke(app, ["delete", a[:8], b[:8], *db])
    assert dry.exit_code == 1 and "renamed" in dry.output and "--yes" in dry.output
    assert len(list_runs(engine)) == 2
    done = runner.invoke(app, ["delete", a[:8], b[:8], "--yes", *db])
    assert done.exit_code == 0, done.output
    assert list_runs(engine) == []


def test_annotations_travel_and_merge_on_import(tmp_path: Path) -> None:
    home, away = make_engine(str(tmp_path / "home.db")), make_engine(str(tmp_path / "away.db"))
    store = EpochWriter(home)
    ids = store.create_runs(_specs(2), status="running")
    for run_id in ids:  # an import takes finished runs only
        store.finish_run(run_id, "completed")
    set_tags(home, ids[0], add=["mine"])
    set_notes(home, ids[0], "home notes")
    export_runs(home, ids, tmp_path / "out.db")
    report = import_file(away, tmp_path / "out.db")
    assert len(report.added) == 2
    assert get_run(away, ids[0]).tags == ("mine",) and get_run(away, ids[0]).notes == "home notes"
    # Annotated differently in both places, then imported back: tags united, this
    # database's notes/name kept, the file's fill only what is empty here.
    set_tags(away, ids[0], add=["theirs"])
    set_notes(away, ids[0], "away notes")
    rename_run(away, ids[1], "named away")
    set_notes(away, ids[1], "only away")
    export_runs(away, ids, tmp_path / "back.db")
    rename_run(home, ids[1], "named home")
    back = import_file(home, tmp_path / "back.db")
    assert not back.conflicting and len(back.already_present) == 2
    assert {r.id for r in back.annotated} == set(ids)
    first, second = get_run(home, ids[0]), get_run(home, ids[1])
    assert first.tags == ("mine", "theirs") and first.notes == "home notes"
    assert second.name == "named home" and second.notes == "only away"
    again = import_file(home, tmp_path / "back.db")
    assert again.annotated == ()  # nothing left to merge: importing twice changes nothing


def test_schema_0001_database_upgrades_and_its_export_imports(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    shutil.copy(OLD_DB, old)
    raw = make_engine(str(old), check_schema=False)
    assert upgrade(raw) == ("0001_initial", SCHEMA_REVISION)
    raw.dispose()
    engine = make_engine(str(old))
    runs = list_runs(engine)
    assert len(runs) == 5 and all(r.seq is None and r.tags == () for r in runs)
    finished = [r.id for r in runs if r.status != "queued"]
    set_tags(engine, finished[0], add=["from 0001"])
    export_runs(engine, finished, tmp_path / "old_export.db")
    target = make_engine(str(tmp_path / "new.db"))
    EpochWriter(target).create_runs(_specs(1))
    report = import_file(target, tmp_path / "old_export.db")
    assert len(report.added) == 4 and not report.refused
    assert get_run(target, finished[0]).tags == ("from 0001",)
    # Old runs (no seq) and new ones list together, newest first, without error.
    assert len(list_runs(target)) == 5
    # The original 0001 file itself imports too (upgraded in a copy); its queued run is refused.
    fresh = make_engine(str(tmp_path / "fresh.db"))
    direct = import_file(fresh, OLD_DB)
    assert len(direct.added) == 4 and len(direct.refused) == 1
