"""End to end in a real browser: `gradscope dashboard` (Streamlit plus its background worker) on
a new database, chromium driven by Playwright. Click "Run the classic comparison", wait for the
worker to train the three runs, open Compare: the charts render and the sigmoid run is
diagnosed with vanishing gradients. Screenshots go to test-artifacts/ (and, with
GRADSCOPE_DOCS_SCREENSHOTS=1, to docs/ for the README).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import free_port

from gradscope.db import frames
from gradscope.db.engine import make_engine

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("GRADSCOPE_ARTIFACTS", ROOT / "test-artifacts"))
TRAIN_DEADLINE_S = 240  # three 20-epoch runs, one after another, on a busy 2-core machine
CHART = '[data-testid="stVegaLiteChart"]'


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.25):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)  # polling a condition with a deadline, not synchronising by sleep
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Process ids below `pid`, from /proc (no psutil here)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextmanager
def serving(db: Path, folder: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`gradscope dashboard --db DB OPTIONS` on a free port, healthy before it is handed out;
    stopped with SIGTERM after. Its output goes to FOLDER/dashboard.log."""
    port = free_port()
    gradscope = Path(sys.executable).with_name("gradscope")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(gradscope), "dashboard", "--db", str(db), "--port", str(port), *options]
    log = (folder / "dashboard.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url) or process.poll() is not None, 60, "the dashboard")
        assert process.poll() is None, (folder / "dashboard.log").read_text()
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen]]:
    """`gradscope dashboard` with its worker on a new database."""
    db = tmp_path / "e2e.db"
    with serving(db, tmp_path) as (url, process):
        yield url, db, process


def save(page, name: str) -> Path:  # noqa: ANN001 - a Playwright page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def completed_runs(db: Path) -> int:
    engine = make_engine(str(db))
    try:
        return int((frames.runs(engine)["status"] == "completed").sum())
    finally:
        engine.dispose()


def test_classic_comparison_end_to_end(browser, dashboard) -> None:  # noqa: ANN001
    url, db, process = dashboard
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(url)
        page.get_by_text("No runs yet").wait_for(timeout=60_000)
        page.get_by_text("Worker alive").wait_for(timeout=30_000)
        save(page, "01-empty")
        page.get_by_role("button", name="Run the classic comparison").click()
        page.locator('[data-testid="stDataFrame"]').wait_for(timeout=30_000)

        started = time.monotonic()
        wait_until(lambda: completed_runs(db) == 3, TRAIN_DEADLINE_S, "three completed runs", 1)
        trained_s = time.monotonic() - started
        # The page follows by itself (fragments refresh every 2 s): the sidebar's queue
        # empties and the table's statuses change, so nothing is left to cancel.
        page.get_by_text("Queue: 0 running, 0 queued").wait_for(timeout=30_000)
        bars = page.locator('[data-testid="stSidebar"] [data-testid="stProgress"]')
        wait_until(lambda: bars.count() == 0, 30, "the queue's progress bars to go")
        page.get_by_role("button", name="Cancel 0 run(s)").wait_for(timeout=30_000)
        save(page, "02-runs")

        page.get_by_role("link", name="Compare").click()
        page.get_by_text("Gradient flow").first.wait_for(timeout=60_000)
        drawn = page.locator(f"{CHART} canvas, {CHART} svg")
        wait_until(lambda: drawn.count() >= 13, 60, "every chart to draw")
        assert page.locator(CHART).count() >= 13  # curves, flow, 3 heatmaps, ..., 3 maps

        # The diagnosis: one column per run (chart titles are drawn, not text; the shared
        # legend's column names every run, a card names one).
        archs = ("sigmoid", "relu", "resnet")
        cards = page.locator('[data-testid="stColumn"]')

        def card(arch: str) -> str:
            one = cards.filter(has_text=f"arch={arch}")
            for other in archs:
                if other != arch:
                    one = one.filter(has_not_text=f"arch={other}")
            return one.first.inner_text()

        assert "Vanishing gradients" in card("sigmoid")
        for arch in ("relu", "resnet"):
            assert "Vanishing gradients" not in card(arch)
        # The signature picture is at the top: above the diagnosis and the learning curves.
        flow = page.get_by_role("heading", name="Gradient flow").bounding_box()
        curves = page.get_by_role("heading", name="Learning curves").bounding_box()
        assert flow and curves and flow["y"] < curves["y"]
        assert "runs=" in page.url  # the view is a link

        # Streamlit scrolls inside its main area: make the window as tall as the whole page.
        tall = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": 1500, "height": int(tall) + 40})
        wait_until(lambda: drawn.count() >= 13, 30, "charts after resizing")
        shot = save(page, "03-compare")
        if os.environ.get("GRADSCOPE_DOCS_SCREENSHOTS"):
            shutil.copy(shot, ROOT / "docs" / "compare.png")
        print(f"trained the classic comparison in {trained_s:.1f} s")
    finally:
        page.close()

    children = descendants(process.pid)
    assert len(children) >= 2  # streamlit and the worker
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    wait_until(lambda: not any(alive(pid) for pid in children), 30, "children to stop")


@pytest.fixture
def many_runs_dashboard(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """`gradscope dashboard --no-worker` on a database of 32 recorded runs (8 configs x 4
    seeds, written through EpochWriter: no training), stopped with SIGTERM after."""
    from dashboard_helpers import add_run

    db = tmp_path / "many.db"
    engine = make_engine(str(db))
    ids = []
    for k, arch in enumerate(("sigmoid", "relu", "resnet", "relu")):
        for depth in (2, 3):
            for seed in range(4):
                first = 10.0 ** -(k + depth + 0.3 * seed)  # different flows per config
                norms = [first * 10.0 ** (i * (k + 1) / depth) for i in range(depth + 1)]
                ids.append(
                    add_run(engine, arch=arch, depth=depth, seed=seed, grad_norms=norms, epochs=3)
                )
    engine.dispose()
    with serving(db, tmp_path, "--no-worker") as (url, _process):
        yield url, ids


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_compare_with_many_runs_in_both_themes(browser, many_runs_dashboard, scheme) -> None:  # noqa: ANN001
    """Compare with 32 runs: no exception, the gradient flow is at the top, one shared legend,
    and no request leaves the machine (favicon and fonts are local)."""
    url, ids = many_runs_dashboard
    # Streamlit follows the browser's colour scheme when no theme is configured.
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, color_scheme=scheme)
    page = context.new_page()
    outside: list[str] = []
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else outside.append(r.url)
        ),
    )
    try:
        page.goto(f"{url}/compare?runs={','.join(ids)}&epoch=2")
        page.get_by_text("Gradient flow").first.wait_for(timeout=60_000)
        drawn = page.locator(f"{CHART} canvas, {CHART} svg")
        wait_until(lambda: drawn.count() >= 8, 60, "the charts to draw")
        assert page.locator('[data-testid="stException"]').count() == 0
        flow = page.get_by_role("heading", name="Gradient flow").bounding_box()
        diagnosis = page.get_by_role("heading", name="Diagnosis").bounding_box()
        curves = page.get_by_role("heading", name="Learning curves").bounding_box()
        assert flow and diagnosis and curves
        assert flow["y"] < diagnosis["y"] < curves["y"]
        assert flow["y"] < 900  # on the first screen, above everything but the controls
        # With many runs the diagnosis is one compact table, not a grid of cards, and the 32
        # heatmaps wait behind a switch: the charts are the eight shared ones.
        assert page.locator('[data-testid="stDataFrame"]').count() >= 1
        assert page.get_by_text("Show the 32 heatmaps").count() == 1
        tall = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": 1500, "height": int(tall) + 40})
        wait_until(lambda: drawn.count() >= 8, 30, "charts after resizing")
        save(page, f"04-compare-32-runs-{scheme}")
        print(f"Compare with {len(ids)} runs, {scheme} theme: page {tall} px tall")
        assert not outside, outside
    finally:
        context.close()
