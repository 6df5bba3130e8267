"""The Compare page (AppTest on the seeded runs): every chart with its data, the diagnosis, the
config differences, and the view kept in the URL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dashboard_helpers import (
    Chart,
    add_run,
    assert_ok,
    chart_titled,
    charts,
    open_app,
    shown_text,
    shows_literally,
)

from db import frames
from db.engine import make_engine
from db.store import RunStore
from vocab.records import EpochRecord


@pytest.fixture
def seeded_ids(seeded_db: Path) -> dict[str, str]:
    """name -> run id of the three seeded runs."""
    engine = make_engine(str(seeded_db))
    runs = frames.runs(engine)
    engine.dispose()
    return dict(zip(runs["name"], runs["id"], strict=True))


def labels_in(chart: Chart) -> set[str]:
    return set(chart.data["run_label"])


def heatmaps(at) -> list[Chart]:  # noqa: ANN001
    return [
        c
        for c in charts(at)
        if c.spec.get("encoding", {}).get("color", {}).get("field") == "log10_grad_norm"
    ]


def decision_maps(at) -> list[Chart]:  # noqa: ANN001
    return [c for c in charts(at) if "prob" in c.data.columns]


def open_compare(monkeypatch: pytest.MonkeyPatch, db: Path, ids: list[str], **params: str):  # noqa: ANN201
    return open_app(monkeypatch, db, "compare", {"runs": ",".join(ids), **params})


def test_compare_draws_every_chart_for_the_chosen_runs(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    ids = list(seeded_ids.values())
    at = open_compare(monkeypatch, seeded_db, ids, epoch="2", layer="1")
    titles = [c.title for c in charts(at)]
    for expected in (
        "Loss",
        "Accuracy",
        "Prediction spread",
        "Gradient flow",
        "Gradient magnitudes",
        "Activation spread",
        "Saturated and dead units",
    ):
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    # One heatmap and one decision map per run, titled with the run.
    assert [h.title for h in heatmaps(at)] == [m.title for m in decision_maps(at)]
    assert {h.title.split(" · ")[0] for h in heatmaps(at)} == set(seeded_ids)

    (loss,) = chart_titled(at, "Loss")
    assert len(labels_in(loss)) == 3
    assert len(loss.data) == 3 * 4 * 2  # runs x epochs x (train, test)

    (flow,) = chart_titled(at, "Gradient flow")
    assert set(flow.data["epoch"]) == {2}  # the epoch from the URL
    assert len(flow.data) == 3 * 7
    sigmoid = flow.data[flow.data["run_label"].str.startswith("seed sigmoid")].sort_values("layer")
    # Vanishing: the first layer's gradient is orders of magnitude below the output layer's.
    assert sigmoid["grad_norm"].iloc[0] < sigmoid["grad_norm"].iloc[-1] / 1e3

    (hist,) = chart_titled(at, "Gradient magnitudes")
    assert len(labels_in(hist)) == 3
    in_bins = hist.data.groupby("run_label")["fraction"].sum()
    assert (in_bins <= 1 + 1e-9).all()
    # Entries that are exactly 0 (dead ReLU units) cannot sit on a log axis: the page says so.
    zero_note = [c.value for c in at.caption if c.value.startswith("Not on the log axis")]
    for label, fraction in in_bins.items():
        assert (fraction == pytest.approx(1.0)) != any(
            label.split(" · ")[0] in n for n in zero_note
        )


def test_heatmaps_share_one_colour_scale(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    at = open_compare(monkeypatch, seeded_db, list(seeded_ids.values()))
    maps = heatmaps(at)
    assert len(maps) == 3
    domains = {tuple(h.spec["encoding"]["color"]["scale"]["domain"]) for h in maps}
    assert len(domains) == 1
    lo, hi = domains.pop()
    logs = np.concatenate([np.log10(h.data["grad_norm"]) for h in maps])
    assert lo <= logs.min() and logs.max() <= hi
    assert all(len(h.data) == 4 * 7 for h in maps)  # epochs x layers


def test_diagnosis_names_the_vanishing_sigmoid_run(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    order = ["seed resnet", "seed sigmoid"]
    at = open_compare(monkeypatch, seeded_db, [seeded_ids[n] for n in order])
    cards = [md.value for md in at.markdown]
    sigmoid_at = next(i for i, text in enumerate(cards) if "seed sigmoid" in text)
    assert "Vanishing gradients" in cards[sigmoid_at + 1]  # the card's labels line
    assert "10^-" in cards[sigmoid_at + 2]  # the explanation quotes the ratio
    resnet_at = next(i for i, text in enumerate(cards) if "seed resnet" in text)
    assert "Vanishing" not in cards[resnet_at + 1]
    text = shown_text(at)
    assert "Use ReLU hidden layers" in text  # a cure, in the details


def test_config_table_shows_only_the_fields_that_differ(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    at = open_compare(monkeypatch, seeded_db, list(seeded_ids.values()))
    (diff,) = [df.value for df in at.dataframe]
    assert list(diff.columns) == ["arch"]  # one column per differing field, a row per run
    assert sorted(diff["arch"]) == ["relu", "resnet", "sigmoid"]
    assert len(diff) == 3
    assert "depth = 6" in shown_text(at)  # the shared fields, in one line


@pytest.mark.slow  # a dozen reruns of the Compare page: seconds
def test_view_lives_in_the_url(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    ids = [seeded_ids["seed sigmoid"], seeded_ids["seed relu"]]
    at = open_compare(monkeypatch, seeded_db, ids, epoch="3", layer="2", scale="log")
    assert at.slider(key="compare_epoch").value == 3
    assert at.selectbox(key="compare_layer").value == 2
    (loss,) = chart_titled(at, "Loss")
    assert loss.spec["encoding"]["y"]["scale"]["type"] == "log"
    assert labels_in(loss) == {lbl for lbl in labels_in(loss) if "seed resnet" not in lbl}

    at.slider(key="compare_epoch").set_value(4).run()
    at.selectbox(key="compare_layer").set_value(5).run()
    at.segmented_control(key="compare_scale").set_value("linear").run()
    assert at.query_params["epoch"] == "4"
    assert at.query_params["layer"] == "5"
    assert at.query_params["scale"] == "linear"
    assert at.query_params["runs"] == ",".join(ids)
    (flow,) = chart_titled(at, "Gradient flow")
    assert set(flow.data["epoch"]) == {4}

    at.multiselect(key="compare_runs").unselect(ids[1]).run()
    assert at.query_params["runs"] == ids[0]
    (flow,) = chart_titled(at, "Gradient flow")
    assert len(labels_in(flow)) == 1


def test_out_of_range_url_values_are_clamped(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    ids = list(seeded_ids.values())
    at = open_compare(monkeypatch, seeded_db, ids + ["no-such-run"], epoch="999", layer="x")
    assert at.slider(key="compare_epoch").value == 4
    assert at.selectbox(key="compare_layer").value == 0
    assert at.query_params["runs"] == ",".join(ids)


def test_compare_without_a_choice_shows_the_newest_runs(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path
) -> None:
    at = open_app(monkeypatch, seeded_db, "compare")
    assert "Showing the newest runs" in shown_text(at)
    (flow,) = chart_titled(at, "Gradient flow")
    assert len(labels_in(flow)) == 3


def test_a_running_run_updates_as_its_epochs_land(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    """The page's data is cached, keyed by the runs' progress: a new epoch shows on the next
    refresh (in the browser the page refreshes itself every few seconds while a run trains)."""
    engine = make_engine(str(db_path))
    run_id = add_run(engine, status="running", epochs=5, recorded=2, grad_norms=(0.1, 0.2, 0.3))
    at = open_compare(monkeypatch, db_path, [run_id])
    (loss,) = chart_titled(at, "Loss")
    assert set(loss.data["epoch"]) == {1, 2}
    stats = [{"grad_norm": g, "grad_hist": None} for g in (0.1, 0.2, 0.3)]
    RunStore(engine).record_epoch(
        run_id,
        EpochRecord(
            3,
            {
                "train_loss": 0.2,
                "test_loss": 0.2,
                "train_acc": 0.9,
                "test_acc": 0.9,
                "pred_std": 0.3,
            },
            stats,
        ),
    )
    engine.dispose()
    at.run()
    assert_ok(at)
    (loss,) = chart_titled(at, "Loss")
    assert set(loss.data["epoch"]) == {1, 2, 3}


def test_run_names_are_shown_as_typed_never_as_markup(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    name = "<img src=x onerror=alert(1)> **loud** [link](http://x)"
    run_id = add_run(engine, name=name)
    engine.dispose()
    at = open_compare(monkeypatch, db_path, [run_id])
    card = next(md.value for md in at.markdown if "loud" in md.value)
    # Every markdown character escaped: Streamlit shows the name exactly as typed.
    assert "\\<img" in card and "\\*\\*loud\\*\\*" in card and "\\[link\\]" in card
    assert all(not el.proto.allow_html for el in at.markdown)


def test_shared_settings_are_shown_as_typed(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    engine = make_engine(str(db_path))
    dataset = "csv:/data/*bold* [x](http://example.com)"  # absolute: stored as typed
    run_id = add_run(engine, dataset=dataset)
    engine.dispose()
    at = open_compare(monkeypatch, db_path, [run_id])
    (shared,) = [c.value for c in at.caption if c.value.startswith("Shared")]
    assert shows_literally(shared, f"dataset = {dataset}"), shared
