"""The dashboard never imports torch: queueing a run, a sweep or the classic comparison keeps
torch (2-4 s and hundreds of MB to load) out of the Streamlit process.

Both checks run the dashboard in a process of its own, so modules other tests imported into the
pytest process can't hide an import: the app in AppTest in a fresh interpreter, and the real
`gradscope dashboard --no-worker` driven by chromium, whose processes' memory maps are read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from test_e2e_browser import descendants, healthy, wait_until

from gradscope.db import frames
from gradscope.db.engine import make_engine

pytestmark = pytest.mark.slow  # each starts processes of its own

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"

# Runs in a fresh interpreter: every page, then the three ways the dashboard queues runs.
APPTEST_SCRIPT = r"""
import json, sys
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1], default_timeout=60)
at.run()
for page in ("compare", "sweeps", "share", "runs"):
    at.switch_page(f"app_pages/{page}.py")
    at.run()
(classic,) = [b for b in at.button if b.label == "Run the classic comparison"]
classic.click().run()
at.text_input(key="new_sweep_depth").set_value("2, 5")
(sweep,) = [b for b in at.form_submit_button if b.label == "Queue sweep"]
sweep.click().run()
(run,) = [b for b in at.form_submit_button if b.label == "Queue run"]
run.click().run()
print(json.dumps({
    "problems": [str(e.value) for e in [*at.exception, *at.error]],
    "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
}))
"""


def test_the_dashboard_queues_runs_sweeps_and_the_classic_comparison_without_torch(
    db_path: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "GRADSCOPE_DB": str(db_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("GRADSCOPE_WORKER_PID", None)
    done = subprocess.run(
        [sys.executable, "-c", APPTEST_SCRIPT, str(APP)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["problems"] == []
    engine = make_engine(str(db_path), read_only=True)
    try:
        runs = frames.runs(engine)
    finally:
        engine.dispose()
    # 3 classic + the default sweep grid over two depths + 1 run: all really queued.
    assert (runs["sweep_name"] == "classic comparison").sum() == 3
    assert runs["sweep_id"].nunique() == 2 and runs["sweep_id"].isna().sum() == 1
    assert report["torch"] == []


def mapped_files(pid: int) -> set[str]:
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:  # exited meanwhile
        return set()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def queued_runs(db: Path) -> int:
    if not db.exists():
        return 0
    engine = make_engine(str(db), read_only=True)
    try:
        return len(frames.runs(engine))
    finally:
        engine.dispose()


@pytest.mark.browser
def test_dashboard_process_never_maps_libtorch(browser, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "dash.db"
    port = free_port()
    gradscope = Path(sys.executable).with_name("gradscope")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = (tmp_path / "dashboard.log").open("wb")
    process = subprocess.Popen(
        [str(gradscope), "dashboard", "--no-worker", "--db", str(db), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    page = browser.new_page()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(url) or process.poll() is not None, 60, "the dashboard")
        assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
        page.goto(url, timeout=60_000)
        page.get_by_text("No runs yet").wait_for(timeout=60_000)
        page.get_by_role("button", name="Run the classic comparison").click()
        page.locator('[data-testid="stDataFrame"]').wait_for(timeout=60_000)
        wait_until(lambda: queued_runs(db) == 3, 60, "three queued runs")
        tree = [process.pid, *descendants(process.pid)]
        maps = {pid: mapped_files(pid) for pid in tree}
        assert len(maps) >= 2, "expected gradscope and its Streamlit child"
        # The check can fail: both processes map Python's own libraries.
        assert all(any("python" in f or "libc" in f for f in files) for files in maps.values())
        torch_libs = {
            pid: sorted(f for f in files if "libtorch" in f) for pid, files in maps.items()
        }
        assert torch_libs == {pid: [] for pid in maps}
    finally:
        page.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()
