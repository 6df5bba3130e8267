"""gradscope.db.lifecycle on real databases (SQLite file and PostgreSQL): claims, groups,
heartbeats,
staleness with a passed-in clock, cancel, release, and a many-thread claim race."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine, update
from worker_helpers import SMALL

from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.lifecycle import (
    WORKER_LOST,
    Claim,
    cancel_runs,
    claim_next,
    db_now,
    heartbeat,
    queue_status,
    recover_lost,
    release,
)
from gradscope.db.models import RunModel
from gradscope.db.queries import get_run
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.config import make_config
from gradscope.vocab.records import RunSpec


def spec(seed: int = 0, group: str | None = None, index: int | None = None) -> RunSpec:
    cfg = make_config({**SMALL, "seed": seed}).model_dump()
    return RunSpec(cfg, group_id=group, group_index=index)


def queue_one_by_one(engine: Engine, specs: list[RunSpec]) -> list[str]:
    """Separate transactions, so created_at orders them (ties broken by creation seq)."""
    store = EpochWriter(engine)
    return [store.create_run(s) for s in specs]


def test_claims_oldest_first_and_each_run_once(engine: Engine) -> None:
    ids = queue_one_by_one(engine, [spec(i) for i in range(3)])
    by_created = sorted(ids, key=lambda i: (get_run(engine, i).created_at, get_run(engine, i).seq))
    assert by_created == ids  # creation order, whatever the UUIDs
    claims = [claim_next(engine, "w1") for _ in range(3)]
    assert [c.run_ids for c in claims] == [(i,) for i in by_created]
    assert claims[0].group_id is None
    assert claims[0].configs[0]["seed"] == get_run(engine, by_created[0]).seed
    assert claim_next(engine, "w1") is None
    run = get_run(engine, by_created[0])
    assert run.status == "running"
    assert run.worker == "w1"
    assert run.started_at is not None and run.heartbeat_at is not None


def test_group_is_claimed_whole_in_member_order(engine: Engine) -> None:
    store = EpochWriter(engine)
    [solo_first] = store.create_runs([spec(9)])
    members = store.create_runs([spec(i, "g1", i) for i in (2, 0, 1)])
    [solo_last] = store.create_runs([spec(8)])
    # SQLite's clock has millisecond steps: make the order of creation unambiguous.
    now = db_now(engine)
    for age, run_ids in ((30, [solo_first]), (20, members), (10, [solo_last])):
        with transaction(engine) as conn, orm(conn) as s:
            s.execute(
                update(RunModel)
                .where(RunModel.id.in_(run_ids))
                .values(created_at=now - timedelta(seconds=age))
            )
    assert claim_next(engine, "w").run_ids == (solo_first,)
    cancel_runs(engine, [members[2]])  # a cancelled member stays out of the claim
    group = claim_next(engine, "w")
    assert group.group_id == "g1"
    assert group.run_ids == (members[1], members[0])  # group_index 0, then 2
    assert [c["seed"] for c in group.configs] == [0, 2]
    assert {get_run(engine, i).status for i in group.run_ids} == {"running"}
    assert claim_next(engine, "w").run_ids == (solo_last,)


def race_claimers(engine: Engine, claimers: int = 6) -> dict[str, list[Claim]]:
    """Claimers on threads, each claiming until the queue is empty: every claim by claimer."""
    claims: dict[str, list[Claim]] = {f"w{i}": [] for i in range(claimers)}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while (claim := claim_next(engine, name)) is not None:
                claims[name].append(claim)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return claims


def test_concurrent_claimers_never_share_a_run(engine: Engine) -> None:
    ids = EpochWriter(engine).create_runs([spec(i) for i in range(40)])
    claimed = {
        name: [run_id for c in claims for run_id in c.run_ids]
        for name, claims in race_claimers(engine).items()
    }
    every = [run_id for runs in claimed.values() for run_id in runs]
    assert sorted(every) == sorted(ids)  # all claimed, none twice
    for name, runs in claimed.items():
        assert {get_run(engine, i).worker for i in runs} <= {name}


def test_concurrent_claimers_take_each_group_whole(engine: Engine) -> None:
    """Groups of a batched sweep, queued in one transaction (one created_at, so the claim
    order interleaves their members), with solo runs among them: under six racing claimers
    every run is claimed once and every group by one claimer, in one claim."""
    groups = {f"g{g}": [spec(g * 10 + i, f"g{g}", i) for i in range(4)] for g in range(8)}
    solos = [spec(100 + i) for i in range(8)]
    ids = EpochWriter(engine).create_runs([*solos, *(m for ms in groups.values() for m in ms)])
    claims = [c for per_claimer in race_claimers(engine).values() for c in per_claimer]
    every = [run_id for c in claims for run_id in c.run_ids]
    assert sorted(every) == sorted(ids)  # all claimed, none twice
    grouped = {c.group_id: c for c in claims if c.group_id is not None}
    assert len(grouped) == len(groups) == len([c for c in claims if c.group_id])
    for claim in grouped.values():
        assert len(claim.run_ids) == 4  # the whole group in one claim
        assert [c["seed"] % 10 for c in claim.configs] == [0, 1, 2, 3]  # member order
    assert len([c for c in claims if c.group_id is None]) == len(solos)


def test_stale_runs_are_marked_lost_by_the_clock_passed_in(engine: Engine) -> None:
    ids = EpochWriter(engine).create_runs([spec(0), spec(1)])
    claim_next(engine, "dead")
    claim_next(engine, "alive")
    now = db_now(engine)
    assert recover_lost(engine, 60, now=now + timedelta(seconds=30)) == {}
    # "alive" heartbeats; "dead" does not. Only the silent one is stale a minute later.
    alive_id = next(i for i in ids if get_run(engine, i).worker == "alive")
    dead_id = next(i for i in ids if i != alive_id)
    # age the dead worker's heartbeat by two minutes
    with transaction(engine) as conn, orm(conn) as s:
        s.execute(
            update(RunModel)
            .where(RunModel.id == dead_id)
            .values(heartbeat_at=now - timedelta(seconds=120))
        )
    assert recover_lost(engine, 60, spare_worker="dead") == {}  # its own runs are spared
    assert recover_lost(engine, 60) == {dead_id: "failed"}
    lost = get_run(engine, dead_id)
    assert (lost.status, lost.error) == ("failed", WORKER_LOST)
    assert lost.finished_at is not None
    assert get_run(engine, alive_id).status == "running"
    # The dead worker, should it wake up, learns the run is no longer its own.
    assert heartbeat(engine, [dead_id], "dead")[dead_id].owned is False
    assert heartbeat(engine, [alive_id], "alive")[alive_id].owned is True
    assert heartbeat(engine, [alive_id], "impostor")[alive_id].owned is False
    assert recover_lost(engine, 60, now=db_now(engine) + timedelta(seconds=61)) == {
        alive_id: "failed"
    }


def test_cancel_queued_now_running_by_request(engine: Engine) -> None:
    ids = queue_one_by_one(engine, [spec(0), spec(1)])
    # Two runs queued within one millisecond tie on created_at: take whichever was claimed.
    (running,) = claim_next(engine, "w").run_ids
    (queued,) = set(ids) - {running}
    outcome = cancel_runs(engine, [queued, running, "no-such-run"])
    assert outcome == {
        queued: "cancelled",
        running: "cancel requested",
        "no-such-run": "not found",
    }
    assert get_run(engine, queued).status == "cancelled"
    assert get_run(engine, running).status == "running"
    assert heartbeat(engine, [running], "w")[running].cancel_requested is True
    EpochWriter(engine).finish_run(running, "completed")
    # Finished runs are untouched, and said to be so.
    assert cancel_runs(engine, [running, queued]) == {
        running: "already completed",
        queued: "already cancelled",
    }
    assert get_run(engine, running).status == "completed"
    assert claim_next(engine, "w") is None


def test_release_requeues_only_unstarted_runs_of_that_worker(engine: Engine) -> None:
    store = EpochWriter(engine)
    ids = store.create_runs([spec(i, "g", i) for i in range(3)])
    claim = claim_next(engine, "w")
    assert set(claim.run_ids) == set(ids)
    with transaction(engine) as conn, orm(conn) as s:  # the first member has trained an epoch
        s.execute(update(RunModel).where(RunModel.id == ids[0]).values(epochs_done=1))
    assert release(engine, ids, "someone else") == []
    assert sorted(release(engine, ids, "w")) == sorted(ids[1:])
    assert get_run(engine, ids[0]).status == "running"
    back = get_run(engine, ids[1])
    assert (back.status, back.worker, back.started_at) == ("queued", None, None)
    assert set(claim_next(engine, "w2").run_ids) == set(ids[1:])


def test_queue_status_counts_and_live_workers(engine: Engine) -> None:
    EpochWriter(engine).create_runs([spec(i) for i in range(3)])
    claim_next(engine, "w1")
    status = queue_status(engine)
    assert (status.queued, status.running, status.live_workers) == (2, 1, ("w1",))
