"""One transaction API (gradscope.db.transactions): nothing else in the product opens a
connection or a transaction, a lock-first transaction makes a second writer wait, and
`with_retry` retries lock conflicts and nothing else."""

from __future__ import annotations

import ast
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.exc import OperationalError

from gradscope.db.errors import StorageError
from gradscope.db.lifecycle import create_runs
from gradscope.db.models import RunModel
from gradscope.db.transactions import SCHEMA_LOCK, transaction, with_retry
from gradscope.vocab.records import RunSpec

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("db", "runner", "dashboard", "gradscope")
OWNER = "db/transactions.py"

# Every use of a connection outside `transaction()`, by (file or folder, function, kind).
ALLOWED = {
    ("db/engine.py", "make_engine", "storage_errors"): (
        "create_engine's own errors (a bad URL option): no connection exists yet"
    ),
    ("db/engine.py", "connect", "sqlite3.connect"): (
        "the creator through which a read-only SQLite engine opens its file (mode=ro)"
    ),
    ("db/engine.py", "_stamped_revision", "sqlite3.connect"): (
        "a SQLite file's schema stamp, read with mode=ro before a writing engine opens it "
        "(that engine's first connection switches the file to WAL: a newer file stays as is)"
    ),
    ("db/share", "*", "sqlite3.connect"): (
        "hostile import files, opened read-only and checked before SQLAlchemy sees them; "
        "the exported file's journal mode, once its engine is disposed"
    ),
}  # an entry that no longer matches anything fails the test below: this list only shrinks
HAND_WRITTEN_LOCKS = ("BEGIN IMMEDIATE", "pg_advisory_xact_lock(")


def _kind(node: ast.Call) -> str | None:
    """What a call does with a database connection, or None: nothing of interest."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name in ("begin", "connect", "raw_connection") and not node.args and not node.keywords:
        return f".{name}()"  # Engine.begin(), Engine.connect(), Connection.begin()
    sqlite3_module = isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "sqlite3"
    if name == "connect" and sqlite3_module:
        return "sqlite3.connect"
    if name in ("storage_errors", "Session", "sessionmaker"):
        return name
    return None


class _Uses(ast.NodeVisitor):
    """(line, enclosing function, kind) of every use of a connection in one module."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str, str]] = []
        self._functions = ["<module>"]

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        kind = _kind(node)
        if kind is not None:
            self.found.append((node.lineno, self._functions[-1], kind))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        text = node.value
        # Statements, not prose: a docstring may name them.
        statement = isinstance(text, str) and "\n" not in text
        if statement and any(lock in text for lock in HAND_WRITTEN_LOCKS):
            self.found.append((node.lineno, self._functions[-1], "hand-written lock"))


def _entry(path: str, function: str, kind: str, table: dict) -> tuple | None:
    for key in table:
        place, where, what = key
        if (path == place or path.startswith(place)) and where in ("*", function) and what == kind:
            return key
    return None


def test_nothing_outside_the_transaction_module_opens_a_connection() -> None:
    stray: list[str] = []
    used: set[tuple] = set()
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name == OWNER:
                continue
            uses = _Uses()
            uses.visit(ast.parse(path.read_text(), filename=name))
            for line, function, kind in uses.found:
                key = _entry(name, function, kind, ALLOWED)
                if key is None:
                    stray.append(f"{name}:{line} ({function}): {kind}")
                else:
                    used.add(key)
    assert stray == [], "use gradscope.db.transactions.transaction() instead:\n" + "\n".join(stray)
    unused = set(ALLOWED) - used
    assert unused == set(), f"allowed uses that no longer exist; remove them: {unused}"


def test_only_the_transaction_module_turns_driver_errors_into_storage_errors() -> None:
    wrapping = [
        str(path.relative_to(ROOT))
        for folder in PRODUCT
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"except\s*\(?[\w., ]*SQLAlchemyError", path.read_text())
    ]
    assert wrapping == [OWNER]


# -- behaviour ----------------------------------------------------------------------------------


def _counter(engine: Engine, run_id: str) -> int:
    with transaction(engine) as conn:
        return conn.execute(select(RunModel.epochs_done).where(RunModel.id == run_id)).scalar_one()


def test_a_lock_first_transaction_makes_a_second_writer_wait(engine: Engine) -> None:
    """Two read-add-write transactions, the second started while the first holds the lock:
    the second waits, then reads the first one's write (no update is lost)."""
    [run_id] = create_runs(engine, [RunSpec({})])
    first_holds, release = threading.Event(), threading.Event()
    second_asks, second_in = threading.Event(), threading.Event()
    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    @event.listens_for(engine, "before_cursor_execute")
    def asking(conn, cursor, statement: str, params, context, executemany) -> None:  # noqa: ANN001
        # The second writer is about to ask for the lock (the first holds it).
        if threading.current_thread().name == "second" and (
            "BEGIN IMMEDIATE" in statement or "pg_advisory_xact_lock" in statement
        ):
            second_asks.set()

    def add_one(name: str, holds: threading.Event | None) -> None:
        try:
            with transaction(engine, lock=SCHEMA_LOCK) as conn:
                if holds is None:
                    second_in.set()
                value = conn.execute(
                    select(RunModel.epochs_done).where(RunModel.id == run_id)
                ).scalar_one()
                seen[name] = value
                if holds is not None:
                    holds.set()
                    assert release.wait(30)
                conn.execute(
                    update(RunModel).where(RunModel.id == run_id).values(epochs_done=value + 1)
                )
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    first = threading.Thread(target=add_one, args=("first", first_holds), name="first")
    second = threading.Thread(target=add_one, args=("second", None), name="second")
    first.start()
    assert first_holds.wait(30)
    second.start()
    assert second_asks.wait(30)
    # The first still holds the lock, so the second cannot be inside its transaction.
    assert not second_in.is_set()
    release.set()
    first.join(30)
    second.join(30)
    event.remove(engine, "before_cursor_execute", asking)
    assert errors == []
    assert seen == {"first": 0, "second": 1}
    assert _counter(engine, run_id) == 2


def _locked() -> StorageError:
    """What `transaction()` raises for SQLite's "database is locked"."""
    try:
        raise OperationalError("UPDATE runs", {}, sqlite3.OperationalError("database is locked"))
    except OperationalError as exc:
        try:
            raise StorageError("database error: database is locked") from exc
        except StorageError as storage:
            return storage


def test_with_retry_retries_a_locked_database() -> None:
    calls = []

    def action() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _locked()
        return "written"

    assert with_retry(action) == "written"
    assert len(calls) == 3


def test_with_retry_gives_up_after_its_attempts() -> None:
    calls = []

    def action() -> None:
        calls.append(1)
        raise _locked()

    with pytest.raises(StorageError, match="database is locked"):
        with_retry(action, attempts=3)
    assert len(calls) == 3


def test_with_retry_gives_up_at_once_on_any_other_error(engine: Engine) -> None:
    calls = []

    def missing_table() -> None:
        calls.append(1)
        with transaction(engine, "reading") as conn:
            conn.exec_driver_sql("SELECT * FROM no_such_table")

    with pytest.raises(StorageError, match="reading: .*no_such_table"):
        with_retry(missing_table)
    assert len(calls) == 1

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a database problem")

    with pytest.raises(ValueError):
        with_retry(broken)
    assert len(calls) == 2
