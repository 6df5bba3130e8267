"""`gradscope runs` and `gradscope show`: reading runs in the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine

from gradscope.cli.common import (
    DbOption,
    JsonOption,
    check_archs,
    check_statuses,
    console,
    err_console,
    fail,
    fmt,
    open_engine,
    print_json,
    refuse_value,
)
from gradscope.cli.options import config_metavar
from gradscope.db.engine import display_url, resolve_db
from gradscope.db.errors import StorageError
from gradscope.db.queries import RunSummary
from gradscope.vocab.custom import CUSTOM_ARCH, display_config, run_progress
from gradscope.vocab.labels import differing_settings, generated_name, settings_text
from gradscope.vocab.text import printable


def register(app: typer.Typer) -> None:
    app.command()(runs)
    app.command()(show)


def runs(
    db: DbOption = None,
    json_out: JsonOption = False,
    status: Annotated[
        list[str] | None,
        typer.Option(
            help="Only runs with this status (repeatable).",
            metavar="STATUS",
            callback=check_statuses,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="At most this many runs (1 or more; default all).", metavar="INTEGER"
        ),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="Only runs of this sweep (its name or id).", metavar="SWEEP")
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            help="Only runs of this arch (repeatable).",
            metavar=config_metavar("arch").replace("]", f"|{CUSTOM_ARCH}]"),
            callback=check_archs,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Only runs whose name contains this text.", metavar="TEXT")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only runs carrying this tag (repeatable).", metavar="TAG"),
    ] = None,
) -> None:
    """List runs, newest first (runs created together in creation order).

    Columns: id, run (its name, or the settings that tell it apart from the others listed),
    model, dataset, status, epochs, test accuracy and the diagnosis (the most serious finding;
    `gradscope show ID` explains it). Every filter value is checked: one that matches no
    possible run (an unknown status, arch, sweep or tag) is refused, not silently empty."""
    from gradscope.db.queries import list_runs

    engine = open_engine(db, read_only=True)
    try:
        _check_open_filters(engine, sweep, tag)
        found = list_runs(engine, status, limit, sweep=sweep, archs=arch, name=name, tags=tag)
        labels = _badges(engine, found)
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json([{**r.to_json(), "diagnosis": labels.get(r.id) or None} for r in found])
        return
    if found:
        _print_runs_table(found, labels, display_url(resolve_db(db)))
    if not found and (status or sweep or arch or name or tag):
        err_console.print("No runs match these filters.")
    elif not found:
        err_console.print("No runs yet. Try: gradscope train --arch sigmoid")


SHOWN_CHOICES = 8  # a refused --sweep or --tag lists at most this many that exist


def _check_open_filters(engine: Engine, sweep: str | None, tags: list[str] | None) -> None:
    """--sweep and --tag name things a database holds: one it does not hold is refused like a
    mistyped --status, naming what it does hold, instead of silently listing nothing."""
    from gradscope.db.queries import filter_values

    if not sweep and not tags:
        return
    known = filter_values(engine)
    if sweep and not any(sweep in (i, n) for i, n in known.sweeps):
        names = list(dict.fromkeys(n or i for i, n in known.sweeps))
        refuse_value("--sweep", f"no sweep {sweep!r} here; {_some('sweeps', names)}")
    missing = [t for t in dict.fromkeys(tags or []) if t not in known.tags]
    if missing:
        what = ", ".join(map(repr, missing))
        refuse_value("--tag", f"no run carries {what}; {_some('tags', list(known.tags))}")


def _some(what: str, values: list[str]) -> str:
    if not values:
        return f"there are no {what} here"
    shown = ", ".join(printable(repr(v)) for v in values[:SHOWN_CHOICES])
    more = f" and {len(values) - SHOWN_CHOICES} more" if len(values) > SHOWN_CHOICES else ""
    return f"{what} here: {shown}{more}"


# What each listed column shows; the run column tells rows apart by the settings the model and
# dataset columns do not already show.
SHOWN_ELSEWHERE = ("arch", "depth", "dataset", "epochs")


def row_labels(found: list[RunSummary]) -> list[str]:
    """Per run: the name a person gave it, else the settings that differ between the listed
    runs (a sweep's generated names all begin alike and were cut to "depth …" at 80 columns)."""
    fields = [f for f in differing_settings([r.config for r in found]) if f not in SHOWN_ELSEWHERE]
    out = []
    for r in found:
        if r.name and not generated_name(r.name, r.sweep_name):
            out.append(r.name)
        else:  # no name, or the sweep's: what tells it apart (else which sweep it is in)
            out.append(settings_text(r.config, fields) or r.sweep_name or "")
    return out


def _print_runs_table(found: list[RunSummary], labels: dict[str, str], where: str) -> None:
    """The runs as a table that reads at 80 columns: short columns whole, the run and dataset
    columns cut with an ellipsis if they must be; a dataset every run shares is said once."""
    datasets = {r.dataset for r in found}
    shared = next(iter(datasets)) if len(datasets) == 1 else None
    # The path on a line of its own when it does not fit beside the words (never broken).
    title = f"runs in {where}"
    lines = [title] if len(title) <= console.width else ["runs in:", where]
    if shared is not None:
        lines.append(f"dataset: {shared} (every run listed)")
    for line in lines:
        console.print(printable(line), highlight=False, soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    names = row_labels(found)
    rows = [
        (
            r.id[:8],
            printable(label),
            printable(f"{r.arch} d{r.depth}"),
            printable(r.dataset),
            printable(r.status),
            run_progress(r.arch, r.status, r.epochs_done, r.epochs_total)[1],
            fmt(r.test_acc),
            labels.get(r.id, ""),
        )
        for r, label in zip(found, names, strict=True)
    ]
    heads = ("id", "run", "model", "dataset", "status", "epochs", "acc", "diagnosis")
    keep = [i for i, h in enumerate(heads) if not (h == "dataset" and shared is not None)]
    heads = tuple(heads[i] for i in keep)
    rows = [tuple(row[i] for i in keep) for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(heads)]
    fixed = sum(w for h, w in zip(heads, widths, strict=True) if h not in ("run", "dataset"))
    # Between two columns: the box's separator and one space of padding.
    spare = max(8, console.width - fixed - 2 * (len(heads) - 1))
    # The run column gets up to two thirds of what is left, the dataset the rest.
    has_dataset = "dataset" in heads
    run_w = min(widths[1], max(4, spare * 2 // 3 if has_dataset else spare))
    caps = {"run": run_w}
    if has_dataset:
        caps["dataset"] = max(5, min(widths[heads.index("dataset")], spare - run_w))
    for head, width in zip(heads, widths, strict=True):
        cap = caps.get(head, width)
        justify = "right" if head in ("epochs", "acc") else "left"
        table.add_column(
            head,
            no_wrap=True,
            overflow="ellipsis",
            min_width=min(cap, width),
            max_width=cap,
            justify=justify,
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _badges(engine: Engine, found: list[RunSummary]) -> dict[str, str]:
    """The runs table's diagnosis label of each listed run ("" for runs with no data yet)."""
    import pandas as pd

    from gradscope.analysis.badges import badges
    from gradscope.db.frames import run_ends

    if not found:
        return {}
    runs = pd.DataFrame(
        {
            "id": [r.id for r in found],
            "status": [r.status for r in found],
            "arch": [r.arch for r in found],
            "dataset": [r.dataset for r in found],
        }
    )
    ends = run_ends(engine)
    labels = badges(runs, ends.layers, ends.epochs, ends.warnings, ends.facts, ends.peaks)
    return {run_id: ("" if b == "empty" else b) for run_id, b in labels.items()}


def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOption = None,
    json_out: JsonOption = False,
    epoch: Annotated[
        int | None,
        typer.Option(
            help="Show the layers at this epoch (default: the last recorded one).",
            metavar="INTEGER",
        ),
    ] = None,
) -> None:
    """Show one run: config, status, diagnosis, per-epoch metrics and per-layer gradients."""
    from gradscope.cli.cure_commands import load_trial, trial_view
    from gradscope.cli.run_view import (
        diagnosis_view,
        epochs_view,
        layers_view,
        metrics_view,
        run_diagnosis,
        warnings_view,
    )
    from gradscope.db.queries import resolve_run_id, run_document

    engine = open_engine(db, read_only=True)
    try:
        doc = run_document(engine, resolve_run_id(engine, run_id))
    except StorageError as exc:
        fail(str(exc))
    recorded = sorted({s["epoch"] for s in doc["layer_stats"]})
    if epoch is not None and epoch not in recorded:
        span = f"1..{recorded[-1]}" if recorded else "none yet"
        fail(f"--epoch {epoch}: this run has no layer statistics for it (recorded: {span})")
    findings = run_diagnosis(doc)
    try:
        trial = load_trial(engine, doc, findings)  # its latest `gradscope cure`, if any
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        out = {**doc, "diagnosis": [f.to_json() for f in findings]}
        for f, shown in zip(findings, out["diagnosis"], strict=True):
            if trial is not None and trial.treats(f):  # its cures, tried and measured
                shown["trial"] = trial.to_json(f)
        if epoch is not None:  # the layers at that epoch, as the table shows them
            out["layer_stats"] = [s for s in doc["layer_stats"] if s["epoch"] == epoch]
            out["layers_epoch"] = epoch
        print_json(out)
        return
    header = Text(doc["id"], style="bold")
    header.append(printable(f" {doc['name'] or ''}  status: {doc['status']}"))
    console.print(header, highlight=False)
    if doc["tags"]:
        console.print("tags: " + printable(", ".join(doc["tags"])), highlight=False)
    if doc["notes"]:
        # An imported file's notes may hold escapes: shown, never obeyed (newlines kept).
        shown = "\n".join(printable(line) for line in doc["notes"].splitlines())
        console.print(f"notes: {shown}", highlight=False)
    if doc["error"]:
        console.print(Text("error: " + printable(doc["error"]), style="red"), highlight=False)
    console.print(
        printable(f"attempts: {doc['attempts']}  host: {doc['hostname'] or '-'}"), highlight=False
    )
    # A custom run's config is the user's dict and a model summary: shown flat, escaped (it is
    # free text from a user's script).
    config = " ".join(f"{k}={v}" for k, v in display_config(doc["config"]).items())
    console.print(printable(config), highlight=False)
    console.print()
    console.print(diagnosis_view(findings), highlight=False)
    if trial is not None:
        console.print(trial_view(trial, findings), highlight=False)
    if (warned := warnings_view(doc)) is not None:
        console.print(warned, highlight=False)
    console.print()
    console.print(epochs_view(doc), highlight=False)
    logged = metrics_view(doc)
    if logged is not None:
        console.print(logged, highlight=False)
    if recorded:
        console.print(layers_view(doc, epoch if epoch is not None else recorded[-1]))
