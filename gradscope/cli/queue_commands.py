"""`gradscope` commands for the queue: submit, sweep, worker, cancel. Registered by gradscope.cli.

Thin: each parses options and calls gradscope.db.lifecycle / gradscope.vocab.sweep /
gradscope.runner.worker. Nothing here
imports torch; only the processes that train do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from gradscope.cli.common import (
    DbOption,
    JsonOption,
    MaxCsvOption,
    MaxParamsOption,
    seconds_option,
)
from gradscope.cli.options import with_config_options
from gradscope.vocab.protocol import HEARTBEAT_S, STALE_AFTER_S

T = TypeVar("T")


@with_config_options()
def submit(
    config_values: dict[str, str],
    db: DbOption = None,
    json_out: JsonOption = False,
    max_csv_mb: MaxCsvOption = None,
    max_params: MaxParamsOption = None,
) -> None:
    """Validate one run's configuration and queue it for a worker; print its id."""
    from gradscope.cli.common import console, fail, open_engine, print_json
    from gradscope.db.lifecycle import create_runs
    from gradscope.vocab.budget import check_budget
    from gradscope.vocab.config import ConfigError, make_config
    from gradscope.vocab.csv_files import precheck
    from gradscope.vocab.records import RunSpec

    try:
        cfg = make_config(config_values)
        check_budget(cfg)
        # The header and first rows only: the worker reads the file (it may change meanwhile).
        precheck(cfg)
        spec = RunSpec(cfg.model_dump())  # create_runs makes a CSV path absolute
    except ConfigError as exc:
        fail(f"invalid run configuration, nothing was queued:\n{exc}")
    engine = open_engine(db)
    [run_id] = _storage(lambda: create_runs(engine, [spec]))
    if json_out:
        print_json({"id": run_id, "status": "queued"})
    else:
        console.print(run_id, highlight=False)


@with_config_options(list_values=True)
def sweep(
    config_values: dict[str, str],
    db: DbOption = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch/--no-batch",
            help="Group same-shape runs (they may differ in seed, lr, momentum, epochs, init "
            "and noise) so one worker trains each group together as one batched ensemble; "
            "--no-batch trains them one at a time.",
        ),
    ] = True,
    group_size: Annotated[
        int, typer.Option(min=1, max=4096, help="Most runs in one group (with --batch).")
    ] = 32,
    json_out: JsonOption = False,
    max_params: MaxParamsOption = None,
) -> None:
    """Queue a grid of runs as one sweep: every option may be a comma list.

    For example `--arch sigmoid,relu --depth 2,5,10 --seed 0,1,2` (write a comma inside a
    value as `\\,`, e.g. `--dataset 'csv:/data/a\\,b.csv,moons'`; values that mean the same,
    like 1e-3 and 0.001, are queued once). `--name` names the sweep (it is not split). Any
    invalid value anywhere in the grid: nothing is queued."""
    from gradscope.cli.common import console, err_console, fail, open_engine, print_json
    from gradscope.db.lifecycle import queue_sweep
    from gradscope.vocab.config import ConfigError
    from gradscope.vocab.sweep import check_plan_budget, plan_sweep

    try:
        plan = plan_sweep(
            config_values, name=config_values.get("name"), batch=batch, group_size=group_size
        )
        check_plan_budget(plan)
    except ConfigError as exc:
        fail(str(exc))
    engine = open_engine(db)
    ids = _storage(lambda: queue_sweep(engine, plan))
    groups = len({s.group_id for s in plan.specs if s.group_id is not None})
    for note in plan.notes:  # stderr: stdout stays the result
        err_console.print(f"note: {note}", highlight=False)
    if json_out:
        print_json({"sweep_id": plan.sweep_id, "name": plan.name, "runs": ids, "groups": groups})
        return
    grouped = f" in {groups} groups" if groups else ""
    console.print(
        f"queued {len(ids)} runs{grouped} as sweep {plan.name!r} ({plan.sweep_id})",
        highlight=False,
    )


def worker(
    db: DbOption = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Runs trained at once, each in its own process.")
    ] = 1,
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="Exit once no run is queued.")
    ] = False,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="Exit after this many runs.", show_default=False)
    ] = None,
    heartbeat: Annotated[
        float, seconds_option("Seconds between heartbeats of a running run.", 0.05)
    ] = HEARTBEAT_S,
    stale_after: Annotated[
        float,
        seconds_option("A running run whose heartbeat is older than this is 'worker lost'."),
    ] = STALE_AFTER_S,
    poll: Annotated[float, seconds_option("Seconds between looks at an empty queue.", 0.01)] = 1.0,
    max_csv_mb: MaxCsvOption = None,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            max=100,
            help="A lost run (stale heartbeat) is queued again up to this many times; its "
            "partial epochs are discarded.",
        ),
    ] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the workers as actors on a Ray cluster: auto, ray://host:10001, "
            "host:6379, or 'local' (this machine: the Ray instance running here, if any, else "
            "a private one started and stopped with the worker).",
            show_default=False,
        ),
    ] = None,
    cpus_per_worker: Annotated[
        float, typer.Option(min=0.0, help="With --ray: CPUs each worker actor reserves.")
    ] = 1.0,
    gpus_per_worker: Annotated[
        float,
        typer.Option(min=0.0, help="With --ray: GPUs each worker actor reserves (0.5 shares one)."),
    ] = 0.0,
    max_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=4096,
            help="With --ray: elastic, as many actors as queued runs (a group counts once) up "
            "to this many; --concurrency is then ignored.",
            show_default=False,
        ),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(min=0.0, help="With --max-workers: seconds an idle actor stays."),
    ] = 60.0,
) -> None:
    """Train queued runs, oldest first, until stopped. Ctrl-C or SIGTERM stops the running runs
    at their next check (within about a second) and marks them interrupted, epochs kept.
    With --ray the workers run as Ray actors, placed by the cluster."""
    from gradscope.cli.common import err_console, fail
    from gradscope.db.engine import resolve_db

    if ray_address is None and (
        max_workers is not None or (cpus_per_worker, gpus_per_worker) != (1.0, 0.0)
    ):
        fail("--max-workers, --cpus-per-worker and --gpus-per-worker need --ray ADDRESS")
    for name, amount in (("cpus", cpus_per_worker), ("gpus", gpus_per_worker)):
        if amount > 1 and amount != int(amount):  # Ray's rule for resource quantities
            fail(f"--{name}-per-worker {amount:g}: above 1 it must be a whole number")
    if ray_address is not None:
        from gradscope.runner.ray_workers import RAY_MISSING, address_problem, ray_installed

        if not ray_installed():
            fail(RAY_MISSING)
        if problem := address_problem(resolve_db(db), ray_address):
            fail(problem)
    _existing_database(db)  # a missing or outdated database fails here, readably
    from gradscope.runner.worker import WorkerOptions, log, run_worker

    if stale_after < 3 * heartbeat:
        log(
            f"warning: --stale-after {stale_after:g} is under three heartbeats "
            f"({heartbeat:g} s each): live runs of other workers may be marked lost"
        )
    options = WorkerOptions(
        db=resolve_db(db),
        concurrency=concurrency,
        exit_when_idle=exit_when_idle,
        max_runs=max_runs,
        heartbeat_s=heartbeat,
        stale_after_s=stale_after,
        poll_s=poll,
        retries=retries,
    )
    try:
        if ray_address is not None:
            from gradscope.runner.ray_workers import RayOptions, run_ray_workers

            ray_options = RayOptions(
                address=ray_address,
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                max_workers=max_workers,
                idle_timeout_s=idle_timeout,
            )
            handled = run_ray_workers(options, ray_options)
        else:
            handled = run_worker(options)
    except RuntimeError as exc:
        fail(str(exc), code=1)
    plural = "" if handled == 1 else "s"
    err_console.print(f"worker finished after {handled} run{plural}", highlight=False)


def _existing_database(db: str | None) -> None:
    """Fail, saying how to make one, unless `db` is a gradscope database already: a worker
    trains the runs queued there, and a mistyped --db must not become a new empty file (the
    worker would find nothing to do and finish "after 0 runs")."""
    from gradscope.cli.common import fail
    from gradscope.db.engine import display_url, make_engine, resolve_db
    from gradscope.db.errors import SchemaVersionError, StorageError

    target = resolve_db(db)
    try:
        make_engine(target, create=False).dispose()
    except SchemaVersionError as exc:
        fail(str(exc))  # names the command that upgrades it
    except StorageError as exc:
        where = display_url(target)
        fail(
            f"{exc}. A worker trains the runs queued in an existing database and creates "
            f"none. Queue runs there first (gradscope submit --db {where}), or create an "
            f"empty database with: gradscope db upgrade --db {where}"
        )


def cancel(
    run_ids: Annotated[
        list[str], typer.Argument(help="Run ids (or unique prefixes).", metavar="RUN_ID")
    ],
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Cancel runs: a queued run is cancelled at once; a running one stops within an epoch
    (or about a second) and ends cancelled with its epochs kept."""
    from gradscope.cli.common import console, open_engine, print_json
    from gradscope.db.lifecycle import cancel_runs
    from gradscope.db.queries import resolve_run_id

    engine = open_engine(db, create=False)
    # Every id must resolve before anything changes.
    full_ids = [_storage(lambda r=r: resolve_run_id(engine, r)) for r in run_ids]
    outcome = _storage(lambda: cancel_runs(engine, full_ids))
    if json_out:
        print_json(outcome)
        return
    notes = {
        "cancelled": "cancelled",
        "cancel requested": "cancel requested (stops within an epoch)",
    }
    for run_id, result in outcome.items():
        text = notes.get(result, f"not cancelled: {result}")
        console.print(f"{run_id}  {text}", highlight=False)


def _storage(action: Callable[[], T]) -> T:
    """Run a database action; a StorageError becomes a readable error and a non-zero exit."""
    from gradscope.cli.common import fail
    from gradscope.db.errors import StorageError

    try:
        return action()
    except StorageError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command()(submit)
    app.command()(sweep)
    app.command()(worker)
    app.command()(cancel)
