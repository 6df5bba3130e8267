"""Test the cures in a real browser: `gradscope dashboard` (with its background worker) on a
database holding a trained sick run; Compare's "Test the cures" button queues the trial, the
worker trains it, and the card shows the verdict without a reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e_browser import dashboard, save, wait_until  # noqa: F401 - `dashboard` is a fixture

from gradscope.db.engine import make_engine
from gradscope.db.trials import trial_frames
from gradscope.vocab.fields import ACTIVE_STATUSES

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def trial_state(db: Path, patient: str) -> tuple[int, int]:
    """(runs of the patient's trial, how many have finished)."""
    engine = make_engine(str(db))
    try:
        found = trial_frames(engine, patient)
    finally:
        engine.dispose()
    if found is None:
        return 0, 0
    return len(found.runs), int((~found.runs["status"].isin(ACTIVE_STATUSES)).sum())


def test_test_the_cures_button_in_compare_shows_the_verdict(browser, dashboard) -> None:  # noqa: ANN001, F811
    url, db, _ = dashboard
    gradscope = Path(sys.executable).with_name("gradscope")
    small = ["--samples", "512", "--depth", "6", "--width", "16", "--epochs", "5"]
    made = subprocess.run(
        [str(gradscope), "train", "--db", str(db), "--arch", "sigmoid", *small, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    patient = json.loads(made.stdout)["id"]
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    try:
        page.goto(f"{url}/compare?runs={patient}")
        page.get_by_text("Vanishing gradients").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Test the cures").click()
        wait_until(lambda: trial_state(db, patient)[0] > 0, 30, "the trial to be queued")
        total = trial_state(db, patient)[0]
        wait_until(lambda: trial_state(db, patient)[1] == total, 180, "the trial to train", 1)
        # The card follows by itself: the progress bar's fragment redraws the page when done.
        page.get_by_text("seeds fixed").first.wait_for(timeout=30_000)
        page.get_by_text(f"{total} runs finished, measured on seeds 0, 1, 2").wait_for(
            timeout=10_000
        )
        save(page, "cures-compare")
    finally:
        page.close()
