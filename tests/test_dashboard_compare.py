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

from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.vocab.records import EpochRecord


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
    assert loss.spec["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
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


def test_compare_without_a_choice_says_so_and_offers_the_latest_runs(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    add_run(engine, name="older")
    sweep = [add_run(engine, sweep=("s1", "depth sweep"), seed=i) for i in range(3)]
    engine.dispose()
    at = open_app(monkeypatch, db_path, "compare")
    assert "No runs chosen" in shown_text(at)
    assert not chart_titled(at, "Gradient flow")  # not an arbitrary few
    (offer,) = [b for b in at.button if "latest sweep" in b.label]
    assert "depth sweep" in offer.label and "3 runs" in offer.label
    offer.click().run()
    assert_ok(at)
    assert set(at.query_params["runs"].split(",")) == set(sweep)
    (flow,) = chart_titled(at, "Gradient flow")
    assert len(labels_in(flow)) == 3


def flow_colours(at) -> dict[str, str]:  # noqa: ANN001
    """run label -> colour in the gradient-flow chart."""
    (flow,) = chart_titled(at, "Gradient flow")
    scale = flow.spec["encoding"]["color"]["scale"]
    return dict(zip(scale["domain"], scale["range"], strict=True))


def test_a_run_keeps_its_colour_in_different_selections(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    a, b, c = (add_run(engine, name=n) for n in ("run a", "run b", "run c"))
    engine.dispose()
    first = flow_colours(open_compare(monkeypatch, db_path, [a, b]))
    second = flow_colours(open_compare(monkeypatch, db_path, [c, b]))
    label_b = next(k for k in first if k.startswith("run b"))
    # b is second in one selection and last in the other: its colour follows the run.
    assert first[label_b] == second[label_b]
    assert len(set(first.values())) == 2 and len(set(second.values())) == 2
    # The legend is drawn once for the page, not under each chart.
    (flow,) = chart_titled(open_compare(monkeypatch, db_path, [a, b, c]), "Gradient flow")
    assert flow.spec["encoding"]["color"]["legend"] is None


def test_colour_by_architecture_uses_the_fixed_architecture_colours(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, seeded_ids: dict[str, str]
) -> None:
    from gradscope.dashboard.colors import ARCH_COLORS

    at = open_compare(monkeypatch, seeded_db, list(seeded_ids.values()))
    at.selectbox(key="compare_colour_by").set_value("architecture").run()
    assert_ok(at)
    assert flow_colours(at) == {a: ARCH_COLORS[a] for a in sorted(ARCH_COLORS)}
    (flow,) = chart_titled(at, "Gradient flow")
    by_run = flow.data.groupby("run_label")["colour"].first()
    assert by_run[by_run.index.str.startswith("seed relu")].item() == "relu"


def test_grouped_seeds_draw_the_median_with_a_min_max_band(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    norms = [(0.1, 0.2, 0.4), (0.3, 0.1, 0.5), (0.2, 0.6, 0.9)]  # per seed, per layer
    seeded = [add_run(engine, seed=i, grad_norms=g) for i, g in enumerate(norms)]
    other = add_run(engine, arch="sigmoid", grad_norms=(0.01, 0.1, 1.0))
    engine.dispose()
    at = open_compare(monkeypatch, db_path, [*seeded, other], epoch="1")
    at.toggle(key="compare_group_seeds").set_value(True).run()
    assert_ok(at)
    (flow,) = chart_titled(at, "Gradient flow")
    data = flow.data
    assert data["run_label"].nunique() == 2
    group = data[data["run_label"].str.contains("3 seeds")].sort_values("layer")
    expected = np.median(np.array(norms), axis=0)
    assert group["grad_norm"].tolist() == pytest.approx(expected.tolist())
    assert group["grad_norm_lo"].tolist() == pytest.approx(np.min(norms, axis=0).tolist())
    assert group["grad_norm_hi"].tolist() == pytest.approx(np.max(norms, axis=0).tolist())
    assert any(mark_type(layer) == "area" for layer in flow.spec["layer"])  # the band
    (loss,) = chart_titled(at, "Loss")
    assert loss.data["run_label"].nunique() == 2


def mark_type(view: dict) -> str:
    return view["mark"]["type"] if isinstance(view["mark"], dict) else view["mark"]


def test_many_runs_get_a_compact_diagnosis_table_under_the_gradient_flow(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    ids = [add_run(engine, seed=i, name=f"r{i}") for i in range(5)]
    ids.append(add_run(engine, grad_norms=(1e-6, 1e-3, 1.0), name="vanisher"))
    engine.dispose()
    at = open_compare(monkeypatch, db_path, ids)
    (table,) = [df.value for df in at.dataframe if "finding" in df.value.columns]
    assert len(table) == 6
    row = table.set_index("run").filter(like="vanisher", axis=0).iloc[0]
    assert "anishing" in row["summary"]
    subheaders = [h.value for h in at.subheader]
    assert subheaders.index("Gradient flow") < subheaders.index("Diagnosis")
    assert subheaders[0] == "Gradient flow"  # the signature picture comes first


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
    EpochWriter(engine).record_epoch(
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
