"""What the pages read, so they stay fast at 100,000 runs (issue 25, item 3; timed by
`benchmarks/dashboard.py --scale`): `version()`, a scan of the runs table, is read once per
script run and again when the data moves; the Sweeps and Compare pages and the sidebar's queue
beside them never read the list of every run; and each lean read equals the rows it stands
for in the full read."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dashboard_helpers import APP, add_run, assert_ok, open_app, shown_text
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from gradscope.analysis.diagnosis import diagnose
from gradscope.dashboard import tables
from gradscope.db import frames
from gradscope.db.annotate import edit_run
from gradscope.vocab.fields import FINISHED_STATUSES


def counted(monkeypatch: pytest.MonkeyPatch, name: str, keep: Callable[..., bool]) -> list:
    """Calls of gradscope.db.frames.<name> for which `keep(*args, **kwargs)` holds."""
    calls: list[Any] = []
    real = getattr(frames, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if keep(*args, **kwargs):
            calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(frames, name, wrapper)
    return calls


def every_run(_engine: Engine, run_ids: object = None, *, newest: object = None) -> bool:
    return run_ids is None and newest is None


def app_on(monkeypatch: pytest.MonkeyPatch, database: str, page: str, **params: str) -> AppTest:
    """The app opened straight on `page` (a shared link), not after the Runs page."""
    monkeypatch.setenv("GRADSCOPE_DB", database)
    monkeypatch.delenv("GRADSCOPE_WORKER_PID", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert_ok(at)
    return at


def test_version_is_read_once_per_script_run_and_again_when_runs_change(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    ids = [add_run(engine, seed=s) for s in range(3)]
    reads = counted(monkeypatch, "data_version", lambda *a, **k: True)
    at = open_app(monkeypatch, database, "compare", {"runs": ",".join(ids)})
    # Two script runs (the landing page, then Compare): the page asks for it many times.
    assert len(reads) == 2
    later = add_run(engine, name="landed later")
    at.run()
    assert len(reads) == 3
    picker = at.multiselect(key="compare_runs")
    assert any("landed later" in option for option in picker.options), later


def test_sweeps_and_compare_never_read_every_run(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    sweep = (str(uuid.uuid4()), "deep sweep")
    ids = [
        add_run(engine, arch=a, depth=d, grad_norms=(0.1,) * (d + 1), sweep=sweep)
        for a in ("relu", "sigmoid")
        for d in (1, 2)
    ]
    add_run(engine, status="queued", name="waiting")
    full = counted(monkeypatch, "runs", every_run)
    at = app_on(monkeypatch, database, "sweeps", sweep=sweep[0])
    assert "4 of 4 runs finished" in shown_text(at)
    # The sidebar's queue, read alone beside these pages, still lists the queued run.
    assert "Queue: 0 running, 1 queued" in " ".join(c.value for c in at.sidebar.caption)
    at = app_on(monkeypatch, database, "compare", runs=",".join(ids))
    assert "Gradient flow" in shown_text(at)
    assert full == []
    # The Runs page lists every run: that is its job, and its queue is cut from that list.
    open_app(monkeypatch, database)
    assert len(full) == 1


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Values as Python objects, every missing one None (dtypes set aside)."""
    values = frame.astype(object)
    return values.where(values.notna(), None)


def test_lean_reads_equal_the_rows_of_the_full_read(engine: Engine) -> None:
    sweep = (str(uuid.uuid4()), "a sweep")
    swept = [
        add_run(engine, arch=a, seed=s, sweep=sweep) for a in ("relu", "resnet") for s in (0, 1)
    ]
    add_run(engine, status="queued", sweep=sweep)
    others = [add_run(engine, name=f"solo {k}") for k in range(3)]
    edit_run(engine, others[1], name="solo 1", notes=None, tags=["deep", "baseline"])
    edit_run(engine, swept[0], name=None, notes="kept", tags=["deep"])
    every = frames.runs(engine)
    by_id = frames.runs(engine, [others[1], swept[0], "no-such-run"])
    expected = every.set_index("id").loc[[swept[0], others[1]]].reset_index()
    pd.testing.assert_frame_equal(
        by_id.sort_values("id").reset_index(drop=True),
        expected.sort_values("id").reset_index(drop=True),
    )
    # An all-NULL column (no sweep among the newest three) reads back as None, not str's NaN.
    pd.testing.assert_frame_equal(plain(frames.runs(engine, newest=3)), plain(every.head(3)))
    # The sweeps list as the page used to build it from every run.
    in_sweeps = every[every["sweep_id"].notna()]
    old = (
        in_sweeps.assign(finished=in_sweeps["status"].isin(FINISHED_STATUSES))
        .groupby("sweep_id")
        .agg(
            name=("sweep_name", "first"),
            runs=("id", "size"),
            finished=("finished", "sum"),
            created=("created_at", "min"),
        )
        .reset_index()
    )
    new = frames.sweeps(engine)
    assert new[["sweep_id", "name", "runs", "finished"]].values.tolist() == (
        old[["sweep_id", "name", "runs", "finished"]].values.tolist()
    )
    assert list(new["created"]) == list(old["created"])
    configs = frames.sweep_configs(engine, sweep[0])
    selected = frames.selected_runs(engine, list(in_sweeps["id"])).set_index("id")["config"]
    assert configs == selected.to_dict() and len(configs) == 5
    assert frames.known_tags(engine) == ["baseline", "deep"]


def test_diagnosis_of_numbers_only_equals_the_diagnosis_of_the_full_frames(engine: Engine) -> None:
    ids = [
        add_run(engine, name="healthy"),
        add_run(engine, arch="sigmoid", grad_norms=(1e-9, 1e-5, 1.0), test_acc=0.5, pred_std=1e-6),
        add_run(engine, grad_norms=(1e6, 1.0, 1.0), name="exploding"),
        add_run(engine, status="running", epochs=3, recorded=1, name="running"),
    ]
    runs = frames.selected_runs(engine, ids)
    labels = frames.run_labels(runs)
    epochs, layers = frames.epochs(engine, labels), frames.layer_stats(engine, labels)
    fast_e, fast_l = tables.per_run_numbers(epochs), tables.per_run_numbers(layers)
    slow_e = dict(tuple(epochs.groupby("run_id", sort=False)))
    slow_l = dict(tuple(layers.groupby("run_id", sort=False)))
    kinds = set()
    for run in runs.itertuples():
        settings = {"arch": run.arch, "status": run.status, "depth": int(run.depth)}
        fast = diagnose(fast_e[run.id], fast_l[run.id], **settings, dataset=run.dataset)
        slow = diagnose(slow_e[run.id], slow_l[run.id], **settings, dataset=run.dataset)
        assert fast == slow
        assert "run_label" not in fast_l[run.id] and list(fast_l[run.id].index) == list(
            slow_l[run.id].index
        )
        kinds |= {f.kind for f in fast}
    assert {"healthy", "vanishing", "exploding"} <= kinds  # the comparison covers findings


def summary_with_pandas(engine: Engine, sweep_id: str) -> pd.DataFrame:
    """The obvious implementation sweep_summary replaced: a groupby over every row."""
    rows = frames.runs(engine)
    rows = rows[rows["sweep_id"] == sweep_id]
    layers = frames.layer_stats(engine, dict(zip(rows["id"], rows["id"], strict=True)))
    first_epoch = layers[layers["epoch"] == 1]
    ratios = {}
    for run_id, run_layers in first_epoch.groupby("run_id"):
        ordered = run_layers.sort_values("layer")["grad_norm"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[run_id] = float(np.log10(ordered[0] / ordered[-1]))
    return pd.DataFrame(
        {
            "run_id": rows["id"],
            "arch": rows["arch"],
            "depth": rows["depth"],
            "seed": rows["seed"].astype("int64"),
            "grad_ratio_log10": [ratios.get(i, np.nan) for i in rows["id"]],
            "final_test_acc": rows["final_test_acc"],
        }
    )


def test_sweep_summary_equals_a_groupby_over_every_row(engine: Engine) -> None:
    sweep = (str(uuid.uuid4()), "edge cases")
    add_run(engine, sweep=sweep, grad_norms=(1e-3, 0.5, 1.0), seed=1)
    add_run(engine, sweep=sweep, grad_norms=(0.0, 0.5, 1.0), seed=2)  # underflowed: -inf
    add_run(engine, sweep=sweep, grad_norms=(math.nan, 0.5, 1.0), seed=3)  # NaN, not layer 1's
    add_run(engine, sweep=sweep, arch="sigmoid", depth=4, grad_norms=(1e-9, 1, 1, 1, 1), seed=4)
    add_run(engine, sweep=sweep, status="queued", seed=5)  # no epoch yet: NaN
    add_run(engine, grad_norms=(1.0, 1.0, 1.0))  # another run, not in the sweep
    fast = frames.sweep_summary(engine, sweep[0]).sort_values("run_id").reset_index(drop=True)
    slow = summary_with_pandas(engine, sweep[0]).sort_values("run_id").reset_index(drop=True)
    assert len(fast) == 5
    pd.testing.assert_frame_equal(plain(fast), plain(slow))
    assert np.isneginf(fast["grad_ratio_log10"]).sum() == 1
    assert fast["grad_ratio_log10"].isna().sum() == 2
