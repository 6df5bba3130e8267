"""The one heartbeat (gradscope.runner.heartbeat.Heartbeat) of workers, `gradscope train` and API
runs: it notices cancel requests and lost runs, survives a failing database, and a run that
another worker marked lost stops within a heartbeat and writes nothing more. The protocol words
it relies on (timings, worker identity, environment names) are written once."""

from __future__ import annotations

import ast
import multiprocessing
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from worker_helpers import ENDLESS, queue_runs, wait_for

import gradscope
from gradscope.db import lifecycle
from gradscope.db.engine import make_engine
from gradscope.db.errors import StorageError
from gradscope.db.lifecycle import WORKER_LOST, Runtime, cancel_runs, create_runs, db_now
from gradscope.db.models import EpochMetricModel, LayerStatModel, RunLayerModel
from gradscope.db.queries import get_run
from gradscope.db.transactions import transaction
from gradscope.runner.heartbeat import Chore, Heartbeat
from gradscope.vocab.protocol import STALE_AFTER_S
from gradscope.vocab.records import RunSpec

ROOT = Path(__file__).resolve().parent.parent


def _running(engine: Engine, worker: str = "test") -> str:
    runtime = Runtime(worker=worker, device="cpu", torch_version="")
    [run_id] = create_runs(engine, [RunSpec({})], status="running", runtime=runtime)
    return run_id


def _mark_lost(engine: Engine, run_id: str) -> None:
    """What another worker's recovery does to a run whose heartbeat it finds stale."""
    later = db_now(engine) + timedelta(seconds=STALE_AFTER_S + 1)
    assert lifecycle.recover_lost(engine, STALE_AFTER_S, now=later) == {run_id: "failed"}


def _stored(engine: Engine, run_id: str) -> tuple[Any, ...]:
    """Everything training or a heartbeat could still write for the run."""
    run = get_run(engine, run_id)
    with transaction(engine) as conn:
        counts = [
            conn.execute(select(func.count()).where(model.run_id == run_id)).scalar_one()
            for model in (EpochMetricModel, LayerStatModel)
        ]
    return (run.status, run.error, run.epochs_done, run.finished_at, run.heartbeat_at, *counts)


# -- the class ----------------------------------------------------------------------------------


def test_a_heartbeat_keeps_its_run_fresh_and_notices_a_cancel(engine: Engine) -> None:
    run_id = _running(engine)
    first = get_run(engine, run_id).heartbeat_at
    with Heartbeat(engine, "test", [run_id], every_s=0.02) as beat:
        assert beat.should_stop() is None
        assert cancel_runs(engine, [run_id]) == {run_id: "cancel requested"}
        wait_for(beat.should_stop, timeout=10, what="the cancel to be noticed")
        assert beat.should_stop() == "cancelled" and not beat.lost(run_id)
    assert get_run(engine, run_id).heartbeat_at > first


def test_a_lost_run_is_not_beaten_again(engine: Engine) -> None:
    run_id = _running(engine)
    said: list[str] = []
    beat = Heartbeat(engine, "test", [run_id], say=said.append)  # beaten by hand: no thread
    assert beat.beat() is True
    _mark_lost(engine, run_id)
    before = _stored(engine, run_id)
    assert beat.beat() is False
    assert beat.lost(run_id) and beat.should_stop() == "interrupted"
    assert said == [
        f"run {run_id} was marked lost or finished elsewhere: it stops here, and nothing more "
        "of it is recorded"
    ]
    assert beat.beat() is False and len(said) == 1
    assert _stored(engine, run_id) == before
    # A worker's next claim starts afresh.
    beat.track(["another"])
    assert not beat.lost(run_id) and beat.should_stop() is None


def test_a_failing_database_is_said_once_and_beats_go_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _running(engine)
    real = lifecycle.heartbeat
    calls: list[int] = []
    chores: list[int] = []

    def flaky(*args: Any) -> Any:
        calls.append(1)
        if len(calls) <= 3:
            raise StorageError("database error: server closed the connection")
        return real(*args)

    monkeypatch.setattr(lifecycle, "heartbeat", flaky)
    said: list[str] = []
    chore = Chore(0.0, lambda: chores.append(1))
    with Heartbeat(engine, "test", [run_id], every_s=0.01, say=said.append, chores=[chore]):
        wait_for(lambda: len(calls) >= 6, timeout=10, what="beats after the failures")
    assert said[0] == (
        "heartbeat failed (trying again every 0.01 s): database error: server closed the connection"
    )
    assert said[1:] == ["heartbeat works again"]
    assert len(chores) >= 6  # chores run after every beat, failed or not


# -- a run another worker marked lost stops, and writes nothing more ----------------------------

EVERY_S = 1.0  # the heartbeat period of the runs below
# After the loss is known: the step in progress ends, the guarded finish writes nothing and
# the stored status is read.
SETTLE_S = 0.5
# Epochs of a few milliseconds: the next epoch's write finds the run no longer ours.
SHORT_EPOCHS = ENDLESS
# One epoch of about 75,000 steps (many seconds): only the heartbeat can tell training, which
# asks `should_stop` about once a second mid-epoch (gradscope.runner.batched).
LONG_EPOCHS = {**ENDLESS, "samples": 100_000, "batch_size": 1}


def _lose_while_training(
    engine: Engine, train: Any, find_run: Any, *, epochs_first: int, within_s: float
) -> tuple[str, float]:
    """Start `train` on a thread; once its run exists and has recorded `epochs_first` epochs,
    mark it lost as another worker would, and check that training returns within `within_s`
    seconds with nothing in the database changed since the loss. Returns (run id, seconds
    from the loss until training returned)."""
    finished: list[float] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            train()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)
        finished.append(time.monotonic())

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    run_id = wait_for(find_run, timeout=60, what="the run to be training")
    wait_for(lambda: get_run(engine, run_id).epochs_done >= epochs_first, timeout=60, what="epochs")
    _mark_lost(engine, run_id)
    lost_at = time.monotonic()
    at_loss = _stored(engine, run_id)
    thread.join(within_s + 30)  # a deadline for a hang; the bound is asserted below
    assert errors == [] and finished, "training did not stop after its run was lost"
    stopped_after = finished[0] - lost_at
    assert stopped_after < within_s, f"stopped {stopped_after:.2f} s after the loss"
    stored = _stored(engine, run_id)
    assert stored == at_loss
    assert (stored[0], stored[1]) == ("failed", WORKER_LOST)
    return run_id, stopped_after


def _training(engine: Engine) -> str | None:
    """The one run, once its layers are recorded (training has begun)."""
    with transaction(engine) as conn:
        return conn.execute(select(RunLayerModel.run_id)).scalar()


def _train_foreground(engine: Engine, config: dict[str, Any], outcome: list) -> Any:
    from gradscope.runner.foreground import train_foreground

    values = {k: str(v) for k, v in config.items()}
    return lambda: outcome.append(
        train_foreground(engine, values, progress=False, heartbeat_s=EVERY_S)
    )


@pytest.mark.timeout(180)
def test_a_foreground_run_marked_lost_between_epochs_stops_at_once(
    sqlite_engine: Engine,
) -> None:
    outcome: list[tuple[str, str]] = []
    train = _train_foreground(sqlite_engine, SHORT_EPOCHS, outcome)
    # The next epoch's write, guarded by the worker name, already finds the run not ours.
    run_id, _ = _lose_while_training(
        sqlite_engine, train, lambda: _training(sqlite_engine), epochs_first=2, within_s=SETTLE_S
    )
    assert outcome == [(run_id, "failed")]  # the status the other worker wrote


@pytest.mark.timeout(180)
def test_a_foreground_run_marked_lost_mid_epoch_stops_within_a_heartbeat(
    sqlite_engine: Engine,
) -> None:
    from gradscope.runner.batched import STOP_CHECK_SECONDS

    outcome: list[tuple[str, str]] = []
    train = _train_foreground(sqlite_engine, LONG_EPOCHS, outcome)
    # The next beat finds it lost; training hears of it at its next mid-epoch check.
    run_id, _ = _lose_while_training(
        sqlite_engine,
        train,
        lambda: _training(sqlite_engine),
        epochs_first=0,
        within_s=EVERY_S + STOP_CHECK_SECONDS + SETTLE_S,
    )
    assert outcome == [(run_id, "failed")]


@pytest.mark.timeout(180)
def test_a_workers_run_marked_lost_mid_epoch_stops_within_a_heartbeat(
    db_path: Path, sqlite_engine: Engine
) -> None:
    from gradscope.runner.batched import STOP_CHECK_SECONDS
    from gradscope.runner.worker import RunBudget, Slot, WorkerOptions

    queue_runs(sqlite_engine, 1, **{k: v for k, v in LONG_EPOCHS.items() if k != "seed"})
    opts = WorkerOptions(db=str(db_path), exit_when_idle=True, heartbeat_s=EVERY_S)
    slot = Slot(opts, RunBudget(None, multiprocessing.Value("i", 0)), None)
    _lose_while_training(
        sqlite_engine,
        slot.run,
        lambda: _training(sqlite_engine),
        epochs_first=0,
        within_s=EVERY_S + STOP_CHECK_SECONDS + SETTLE_S,
    )
    assert slot.runs_done == 1 and not slot.busy


def test_an_api_run_lost_before_its_heartbeat_noticed_writes_nothing(db_path: Path) -> None:
    # A heartbeat that never comes: only the worker-guarded writes stand between a lost run
    # and its recorded rows.
    run = gradscope.init(db=str(db_path), heartbeat_s=3600)
    run.log_epoch(train_loss=1.0)
    run.diverged  # noqa: B018 - waits until the epoch is stored
    engine = make_engine(str(db_path))
    _mark_lost(engine, run.id)
    at_loss = _stored(engine, run.id)
    run.log_epoch(train_loss=0.5)
    run.diverged  # noqa: B018 - the second epoch's write has been tried
    assert run.finish() == "completed"  # what this process believes; the database disagrees
    assert _stored(engine, run.id) == at_loss
    assert at_loss[:3] == ("failed", WORKER_LOST, 1)
    engine.dispose()


# -- the protocol words are written once (gradscope.vocab.protocol) -----------------------------


def _product_modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text()))
        for folder in ("db", "runner", "dashboard", "gradscope")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]


def test_heartbeat_timing_and_worker_identity_are_written_once() -> None:
    retyped = []
    for name, tree in _product_modules():
        if name == "gradscope/vocab/protocol.py":
            continue
        for node in ast.walk(tree):
            # A heartbeat or stale-limit default typed as a number (not HEARTBEAT_S...).
            if isinstance(node, ast.arguments):
                args = node.posonlyargs + node.args
                positional = args[len(args) - len(node.defaults) :]
                pairs = list(zip(positional, node.defaults, strict=True))
                pairs += [
                    (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d
                ]
                for arg, default in pairs:
                    if _timing(arg.arg) and isinstance(default, ast.Constant):
                        retyped.append(f"{name}:{default.lineno} {arg.arg} = {default.value}")
            elif isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(
                node.value, ast.Constant
            ):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    label = getattr(target, "id", getattr(target, "attr", ""))
                    if _timing(label) and isinstance(node.value.value, float | int):
                        retyped.append(f"{name}:{node.lineno} {label} = {node.value.value}")
            elif isinstance(node, ast.Attribute) and node.attr == "gethostname":
                retyped.append(f"{name}:{node.lineno} socket.gethostname()")
    # Who trains a run is worker_identity(); hostnames elsewhere name machines, not workers.
    machines = {"db/lifecycle.py", "db/user_runs.py", "runner/ray_workers.py"}
    retyped = [r for r in retyped if not (r.endswith("gethostname()") and _file(r) in machines)]
    assert retyped == [], "use gradscope.vocab.protocol:\n" + "\n".join(retyped)


def _timing(label: str) -> bool:
    label = label.lower()
    return "heartbeat" in label or "stale_after" in label


def _file(found: str) -> str:
    return found.split(":", 1)[0]


def test_environment_names_are_written_once() -> None:
    retyped = [
        f"{name}:{node.lineno} {node.value}"
        for name, tree in _product_modules()
        if not name.startswith("gradscope/vocab/")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("GRADSCOPE_")
    ]
    assert retyped == [], "name environment variables in gradscope.vocab.protocol:\n" + "\n".join(
        retyped
    )
