"""`gradscope cure`: try every cure a run's diagnosis names, as one batched sweep; and the trial's
verdict as `gradscope show` prints it. Thin: gradscope.analysis.cures plans and judges,
gradscope.db reads and queues. Nothing here imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.text import Text

from gradscope.cli.common import DbOption, JsonOption
from gradscope.vocab.text import printable

if TYPE_CHECKING:  # the analysis loads pandas: only the commands that need it import it
    from sqlalchemy import Engine

    from gradscope.analysis.cures import Trial
    from gradscope.analysis.diagnosis import Finding


def register(app: typer.Typer) -> None:
    app.command()(cure)


def _seed_list(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"a comma list of whole numbers, e.g. 0,1,2 (got {value!r})"
        ) from None


def cure(
    run_id: Annotated[str, typer.Argument(help="The patient: a run id (or a unique prefix).")],
    db: DbOption = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Seeds to try every cure on, a comma list (default: the run's seed and the "
            "next two).",
            metavar="SEEDS",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Test the cures: queue one batched sweep that tries each cure the run's diagnosis names.

    Each cure the run does not already apply becomes the run's own configuration with exactly
    that one setting changed (ReLU hidden layers, residual blocks, Xavier/He init, Adam, a
    learning rate ten times lower, ...); the unchanged configuration is the control. Each is
    trained on the run's seed and two more. A worker trains them (`gradscope worker`, or the
    dashboard's); `gradscope show RUN_ID` then prints the verdict per cure. Built-in runs only:
    a model recorded through the API is cured by changing its code."""
    from gradscope.analysis.cures import CureRefused, plan_cures
    from gradscope.cli.common import console, fail, open_engine, print_json
    from gradscope.cli.run_view import run_diagnosis
    from gradscope.db.errors import StorageError
    from gradscope.db.lifecycle import queue_sweep
    from gradscope.db.queries import resolve_run_id, run_document
    from gradscope.vocab.config import ConfigError
    from gradscope.vocab.sweep import check_plan_budget

    chosen = _seed_list(seeds)
    engine = open_engine(db, create=False)
    try:
        doc = run_document(engine, resolve_run_id(engine, run_id))
        plan, trial = plan_cures(doc, run_diagnosis(doc), seeds=chosen)
        check_plan_budget(plan)
        ids = queue_sweep(engine, plan)
    except CureRefused as exc:
        fail(f"cannot test cures of run {doc['id'][:8]}: {exc}")
    except (ConfigError, StorageError) as exc:
        fail(str(exc))
    seeds_used = sorted({s.config["seed"] for s in plan.specs})
    if json_out:
        print_json(
            {
                "patient": doc["id"],
                "sweep_id": plan.sweep_id,
                "name": plan.name,
                "runs": ids,
                "seeds": seeds_used,
                "cures": [
                    {"cure": c.key, "label": c.label, "setting": c.setting} for c in trial.changes
                ],
                "untested": [{"cure": u.cure, "why": u.why} for u in trial.untested],
            }
        )
        return
    console.print(
        printable(
            f"queued {len(ids)} runs as sweep {plan.name!r} ({plan.sweep_id}): "
            f"{len(trial.changes)} cure(s) and the control on seeds "
            + ", ".join(map(str, seeds_used))
        ),
        highlight=False,
    )
    for c in trial.changes:
        console.print(printable(f"  {c.label}: {c.setting}"), highlight=False)
    for u in trial.untested:
        console.print(printable(f"  not tried: {u.cure} ({u.why})"), style="dim", highlight=False)
    console.print(
        f"A worker trains them (gradscope worker); then: gradscope show {doc['id'][:8]}",
        highlight=False,
    )


def load_trial(engine: Engine, doc: dict[str, Any], findings: list[Finding]) -> Trial | None:
    """The run's latest cure trial with its verdict (None when it was never tried)."""
    from gradscope.analysis.cures import trial_from
    from gradscope.db.trials import trial_frames
    from gradscope.vocab.custom import is_custom

    if not isinstance(doc.get("config"), dict) or is_custom(doc["config"]):
        return None
    recorded = trial_frames(engine, doc["id"])
    if recorded is None:
        return None
    return trial_from(
        recorded, patient_id=doc["id"], patient_config=doc["config"], findings=findings
    )


def trial_view(trial: Trial, findings: list[Finding]) -> RenderableType:
    """The verdict under each finding it treats, or how far the trial is."""
    parts: list[RenderableType] = [Text("Cure trial", style="bold underline")]
    parts.append(Text(printable(trial.progress_text())))
    if trial.done:
        for f in findings:
            verdicts = trial.for_finding(f)
            untested = trial.untested_for(f)
            if not (verdicts or untested):
                continue
            parts.append(Text(printable(f.title), style="bold"))
            for v in verdicts:
                style = "green" if v.fixed == len(v.seeds) else ("yellow" if v.fixed else "red")
                line = Text("- ", style=style) + Text(printable(v.text()))
                parts.append(Padding(line, (0, 0, 0, 2)))
            for u in untested:
                line = Text(printable(f"- not tried: {u.cure} ({u.why})"), style="dim")
                parts.append(Padding(line, (0, 0, 0, 2)))
    return Group(*parts)
