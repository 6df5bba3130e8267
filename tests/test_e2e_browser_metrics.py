"""In a real browser: Compare for a 4-class model of a user's own design, recorded through the API
with free metrics per step and per epoch (tests/task_runs.py), draws a chart per logged metric
with the metric's name on its axis, per step or per epoch as logged, train/test pairs in one
chart, and no binary-classifier words anywhere on the page's charts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from task_runs import record_multiclass
from test_e2e_browser import CHART, save, serving, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Per chart: the SVG's text (titles, legends, tick labels) and its accessible axis descriptions
# ("X-axis titled 'step' for a linear scale ..."), as Vega renders them.
READ_CHART = """el => ({
    text: [...el.querySelectorAll('svg text')].map(t => t.textContent),
    axes: [...el.querySelectorAll('[aria-label]')].map(a => a.getAttribute('aria-label'))
        .filter(label => label && label.includes('-axis titled')),
})"""


@pytest.fixture
def metrics_dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`gradscope dashboard --no-worker` on a database holding the 4-class API run."""
    db = tmp_path / "metrics.db"
    run_id = record_multiclass(db)
    with serving(db, tmp_path, "--no-worker") as (url, _process):
        yield url, run_id


def axis_title(axes: list[str], axis: str) -> str | None:
    """The title in "<axis>-axis titled '<title>' for ..." (None when the chart has none)."""
    for label in axes:
        if label.startswith(f"{axis}-axis titled '"):
            return label.split("'")[1]
    return None


def test_compare_charts_a_multiclass_runs_logged_metrics_with_their_names(  # noqa: ANN001
    browser, metrics_dashboard
) -> None:
    url, run_id = metrics_dashboard
    page = browser.new_page(viewport={"width": 1500, "height": 4000})
    try:
        page.goto(f"{url}/compare?runs={run_id}")
        page.get_by_role("heading", name="Logged metrics").wait_for(timeout=60_000)
        drawn = page.locator(f"{CHART} svg")
        # Gradient flow, heatmap, loss, spread, 4 metric charts, histograms, activations.
        wait_until(lambda: drawn.count() >= 10, 60, "the charts to draw")
        assert page.locator('[data-testid="stException"]').count() == 0
        charts = [page.locator(CHART).nth(i).evaluate(READ_CHART) for i in range(drawn.count())]
        by_y = {axis_title(c["axes"], "Y"): c for c in charts}
        # One chart per logged name (train/loss and test/loss paired as "loss"), each on the
        # axis it was logged on: steps for per-step values, epochs for per-epoch ones.
        expected_x = {"loss": "step", "grad_norm_preclip": "step", "test/acc": "epoch"}
        for name, x in expected_x.items():
            assert name in by_y, sorted(filter(None, by_y))
            assert axis_title(by_y[name]["axes"], "X") == x
        assert {"train/loss", "test/loss"} <= set(by_y["loss"]["text"])  # the pair's legend
        assert "lr" in by_y  # log_epoch's keyword beyond the four: a per-epoch metric too
        # The per-epoch loss is the loss as logged: no binary-classifier words on any chart.
        assert "loss as logged" in by_y
        words = " ".join(" ".join(c["text"] + c["axes"]) for c in charts)
        for binary in ("cross-entropy", "P(class 1)", "predicted probability"):
            assert binary not in words
        save(page, "05-compare-logged-metrics")
    finally:
        page.close()
