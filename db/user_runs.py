"""Writes peculiar to a run recorded from a user's own loop (the `gradscope` API).

Such a run is created already running (nobody claims it from the queue), learns its model only
when `watch()` is called. Everything else (epochs, with its length growing as they are logged;
heartbeats; finishing) goes through gradscope.db.epoch_writes.EpochWriter and
gradscope.db.lifecycle like any run.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from gradscope.db.clock import now_expr
from gradscope.db.lifecycle import new_id
from gradscope.db.models import RunLayerModel, RunModel
from gradscope.db.transactions import transaction
from gradscope.vocab.custom import CUSTOM_ARCH, CUSTOM_DATASET
from gradscope.vocab.records import LayerInfo

_runs = RunModel.__table__
_layers = RunLayerModel.__table__


def create_custom_run(
    engine: Engine,
    *,
    name: str | None,
    config: dict[str, Any],
    seed: int | None,
    worker: str,
    torch_version: str,
) -> str:
    """Insert a running custom run with a fresh heartbeat, in one transaction (no moment where
    a worker could claim it or recovery could see it without a heartbeat). Returns its id."""
    run_id = new_id()
    now = now_expr(engine.dialect.name)
    with transaction(engine) as s:
        s.execute(
            insert(_runs).values(
                id=run_id,
                name=name,
                status="running",
                config=config,
                arch=CUSTOM_ARCH,
                dataset=CUSTOM_DATASET,
                depth=0,
                width=0,
                seed=seed,
                epochs_total=0,
                epochs_done=0,
                cancel_requested=False,
                worker=worker,
                hostname=socket.gethostname()[:200],
                torch_version=torch_version[:64],
                device="",
                # Never claimed from the queue: a lost custom run is failed, not queued again
                # (no worker could train a user's loop), as a foreground run.
                attempts=0,
                seq=select(func.coalesce(func.max(_runs.c.seq), 0) + 1).scalar_subquery(),
                created_at=now,
                started_at=now,
                heartbeat_at=now,
            )
        )
    return run_id


def describe_model(
    engine: Engine,
    run_id: str,
    *,
    config: dict[str, Any],
    layers: Sequence[LayerInfo],
    width: int,
    device: str,
) -> None:
    """The watched model: the config with its summary, depth (layers recorded), widest layer,
    device, and one run_layers row per layer. One transaction; watch() may be called again."""
    with transaction(engine) as s:
        s.execute(
            update(_runs)
            .where(_runs.c.id == run_id)
            .values(config=config, depth=len(layers), width=width, device=device[:64])
        )
        s.execute(delete(_layers).where(_layers.c.run_id == run_id))
        if layers:
            s.execute(insert(_layers), [{"run_id": run_id, **vars(li)} for li in layers])


def set_model_facts(engine: Engine, run_id: str, facts: dict[str, Any]) -> None:
    """Keep what was learnt about the watched model while it trains (contents, backward order,
    the probe's outcome: gradscope.api.insight) as config.model.facts, for the diagnosis."""
    with transaction(engine, "store model facts") as s:  # one writer: the measuring thread
        config = s.execute(select(_runs.c.config).where(_runs.c.id == run_id)).scalar_one_or_none()
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            return
        model = {**config["model"], "facts": facts}
        s.execute(
            update(_runs).where(_runs.c.id == run_id).values(config={**config, "model": model})
        )
