"""Test the cures (gradscope.analysis.cures): a button under a run's diagnosis that queues its
cure trial, then the trial's progress and, once its sweep has finished, the verdict per cure.
Used by Compare's diagnosis cards, the Runs page's single-run actions and the classic
comparison's follow-up. Writes go through db_gateway's guard; a read-only dashboard shows
verdicts but no button."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from gradscope.analysis.cures import CureRefused, Trial, treated, trial_from
from gradscope.analysis.diagnosis import Finding, diagnose, run_facts
from gradscope.dashboard import db_gateway, view
from gradscope.dashboard.tables import escape_markdown
from gradscope.db.errors import StorageError
from gradscope.vocab.config import ConfigError
from gradscope.vocab.custom import is_custom
from gradscope.vocab.fields import ACTIVE_STATUSES

BUTTON = "Test the cures"
PROGRESS_S = 2.0  # a running trial's progress bar reads the database this often
CODE_CURES = (
    "Cures for a model recorded through the gradscope API are changes to its code "
    "(activations, skip connections, initialisation, optimizer): gradscope can only retrain "
    "its built-in models, so they stay advice here."
)


def diagnose_one(run_id: str) -> tuple[dict[str, Any], list[Finding]] | None:
    """One run's stored fields and its findings (the diagnosis `gradscope show` gives)."""
    row, epochs, layers, warned = db_gateway.run_frames(run_id)
    if row.empty:
        return None
    run = row.iloc[0]
    error = run["error"] if isinstance(run["error"], str) and run["error"] else None
    findings = diagnose(
        epochs,
        layers,
        arch=str(run["arch"]),
        status=str(run["status"]),
        depth=int(run["depth"]),
        dataset=str(run["dataset"]),
        facts=run_facts(run["config"]),
        warnings=warned,
        error=error,
    )
    return patient_of(run), findings


def patient_of(run: Any) -> dict[str, Any]:
    """What plan_cures reads of a run (a row of a runs frame or a namedtuple)."""
    get = run.get if isinstance(run, Mapping | pd.Series) else lambda k: getattr(run, k, None)
    return {
        "id": str(get("id")),
        "name": get("name") if isinstance(get("name"), str) else None,
        "status": str(get("status")),
        "config": get("config"),
    }


def trial_of(patient: Mapping[str, Any], findings: Sequence[Finding]) -> Trial | None:
    if not isinstance(patient.get("config"), dict) or is_custom(patient["config"]):
        return None
    recorded = db_gateway.cure_trial(str(patient["id"]))
    if recorded is None:
        return None
    return trial_from(
        recorded,
        patient_id=str(patient["id"]),
        patient_config=patient["config"],
        findings=list(findings),
    )


def verdict_lines(trial: Trial) -> list[str]:
    """Markdown lines: a coloured count of fixed seeds, then the verdict's own text (escaped)."""
    lines = []
    for v in trial.verdicts:
        n = len(v.seeds)
        colour = "green" if v.fixed == n else ("orange" if v.fixed else "red")
        lines.append(f"- :{colour}-badge[{v.fixed}/{n} fixed] {escape_markdown(v.text())}")
    for u in trial.untested:
        lines.append(f"- :gray-badge[not tried] {escape_markdown(f'{u.cure} ({u.why})')}")
    return lines


@st.fragment(run_every=PROGRESS_S)
def _progress(patient: Mapping[str, Any], findings: Sequence[Finding]) -> None:
    """The running trial's progress, read again every PROGRESS_S on its own: the page around
    it may not refresh (Compare refreshes only while its chosen runs train). When the trial
    has finished, the whole page is drawn again with the verdict."""
    trial = trial_of(patient, findings)
    if trial is None or trial.done:
        st.rerun(scope="app")
        return
    st.progress(trial.finished / max(trial.total, 1), text=escape_markdown(trial.progress_text()))


def show_trial(trial: Trial, patient: Mapping[str, Any], findings: Sequence[Finding]) -> None:
    if not trial.done:
        _progress(patient, findings)
        return
    st.markdown("**Cures, tried**\n\n" + "\n".join(verdict_lines(trial)))
    st.caption(escape_markdown(trial.progress_text()))


def cure_section(patient: Mapping[str, Any], findings: Sequence[Finding], key: str) -> None:
    """Under a run's diagnosis: the verdict of its cure trial, or the button that starts one
    (writable dashboards only), or why its cures cannot be tried."""
    config = patient.get("config")
    if not treated(findings):
        return
    if not isinstance(config, dict) or is_custom(config):
        st.caption(CODE_CURES)
        return
    trial = trial_of(patient, findings)
    if trial is not None:
        show_trial(trial, patient, findings)
        return
    if not db_gateway.writes_allowed():
        return
    if patient.get("status") in ACTIVE_STATUSES:
        st.caption("Its cures can be tested once the run has finished.")
        return
    if st.button(
        BUTTON,
        key=key,
        icon=":material/science:",
        help="Queue one batched sweep: the run's configuration with each cure (one setting "
        "changed), and unchanged as the control, on its seed and two more.",
    ):
        start_trial(patient, findings)


def start_trial(patient: Mapping[str, Any], findings: Sequence[Finding]) -> None:
    try:
        ids = db_gateway.queue_cures(patient, findings)
    except (CureRefused, ConfigError) as exc:
        st.warning(escape_markdown(f"Cannot test these cures: {exc}"), icon=":material/block:")
        return
    except StorageError as exc:
        view.refusal(exc)
        return
    st.toast(f"Queued {len(ids)} runs to test the cures")
    st.rerun()


def classic_followup(runs: pd.DataFrame) -> None:
    """After the classic comparison: offer to test the cures on its sigmoid run, then show how
    the trial goes (the three architectures' story, confirmed or not on this machine)."""
    classic = runs[
        (runs["sweep_name"] == db_gateway.CLASSIC_SWEEP_NAME) & (runs["arch"] == "sigmoid")
    ]
    if classic.empty:
        return
    finished = classic[~classic["status"].isin(ACTIVE_STATUSES)]
    with st.container(border=True):
        st.markdown("**Test the cures on the sigmoid run**")
        if finished.empty:
            st.caption(
                "When the classic comparison has finished, gradscope can try each cure its "
                "diagnosis names on the sigmoid run (ReLU, residual blocks, Xavier init, a "
                "lower learning rate), three seeds each, and measure whether it works."
            )
            return
        found = diagnose_one(str(finished.iloc[0]["id"]))  # the newest one
        if found is None:
            return
        patient, findings = found
        if not treated(findings):
            st.caption("The sigmoid run has nothing to cure on this machine.")
            return
        trial = trial_of(patient, findings)
        if trial is not None:
            show_trial(trial, patient, findings)
            return
        if db_gateway.writes_allowed() and st.button(
            "Test the cures on the sigmoid run", key="classic_cures", icon=":material/science:"
        ):
            start_trial(patient, findings)
