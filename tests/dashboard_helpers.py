"""Helpers for the dashboard tests: run the real app with AppTest on a database, read back what
it shows (text, tables, chart specs with their Arrow data), and make small runs with chosen
numbers through EpochWriter (the same writes the trainer makes)."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from markdown_it import MarkdownIt
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from gradscope.db.epoch_writes import EpochWriter
from gradscope.vocab.config import make_config
from gradscope.vocab.fields import HIST_BINS
from gradscope.vocab.records import EpochRecord, FinalMetrics, LayerInfo, RunSpec

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
# 16 gradient entries, all in the bin [1e-3, 10^-2.75).
HIST = np.bincount([36] * 16, minlength=HIST_BINS + 2).astype("<i4").tobytes()


def open_app(
    monkeypatch: pytest.MonkeyPatch,
    db: Path | str,
    page: str | None = None,
    params: dict[str, str] | None = None,
) -> AppTest:
    """The dashboard on `db`, run once on its landing page and then (if given) on `page`
    ("compare", "sweeps", "share"), with `params` as the URL's query parameters."""
    monkeypatch.setenv("GRADSCOPE_DB", str(db))
    monkeypatch.delenv("GRADSCOPE_WORKER_PID", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def shown_text(at: AppTest) -> str:
    """Everything written as text on the page (markdown, captions, alerts, plain text)."""
    parts: list[str] = []
    for kind in (
        "title",
        "header",
        "subheader",
        "markdown",
        "caption",
        "text",
        "info",
        "warning",
        "error",
        "success",
    ):
        parts += [str(el.value) for el in at.get(kind)]
    return "\n".join(parts)


# Streamlit renders Markdown with GitHub's dialect: CommonMark plus tables and strikethrough.
_MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def rendered_text(markdown: str) -> str:
    """What a person reads when `markdown` is rendered: the HTML's text, tags dropped. Any
    element the text produced (emphasis, a link) shows as its tag name in angle brackets, so
    a test can tell "*x*" rendered as emphasis from "*x*" shown as typed."""
    page = _MARKDOWN.renderInline(markdown)
    page = re.sub(r"<(\w+)[^>]*>", r"<\1>", page)  # keep which element, drop attributes
    return html.unescape(page)


def shows_literally(markdown: str, text: str) -> bool:
    """Whether rendering `markdown` shows `text` exactly as typed (no element made of it)."""
    return text in rendered_text(markdown)


@dataclass
class Chart:
    spec: dict[str, Any]
    datasets: list[pd.DataFrame]

    @property
    def title(self) -> str:
        title = self.spec.get("title", "")
        return title.get("text", "") if isinstance(title, dict) else str(title)

    @property
    def data(self) -> pd.DataFrame:
        """The largest dataset (a chart's own rows; small ones are reference lines)."""
        return max(self.datasets, key=len)


def charts(at: AppTest) -> list[Chart]:
    """Every Altair chart on the page: its Vega-Lite spec and its Arrow datasets."""
    out = []
    for el in at.get("vega_lite_chart"):
        frames = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in el.proto.datasets]
        out.append(Chart(json.loads(el.proto.spec), frames))
    return out


def chart_titled(at: AppTest, prefix: str) -> list[Chart]:
    return [c for c in charts(at) if c.title.startswith(prefix)]


# -- runs with chosen numbers -------------------------------------------------------------------


def add_run(
    engine: Engine,
    *,
    arch: str = "relu",
    depth: int = 2,
    grad_norms: Sequence[float] = (0.1, 0.2, 0.3),
    epochs: int = 2,
    status: str = "completed",
    test_acc: float = 0.9,
    pred_std: float = 0.2,
    sweep: tuple[str, str] | None = None,
    seed: int = 0,
    name: str | None = None,
    recorded: int | None = None,
    dataset: str = "moons",
    settings: dict[str, Any] | None = None,
) -> str:
    """A run of `depth` hidden layers (depth + 1 Linear layers) whose gradient norms per layer
    are `grad_norms` at every epoch, recorded epoch by epoch and finished with `status`
    ("queued" leaves it queued, "running" leaves it running after `recorded` epochs)."""
    cfg = make_config(
        {
            "arch": arch,
            "depth": depth,
            "width": 4,
            "epochs": epochs,
            "seed": seed,
            "name": name,
            "dataset": dataset,
        }
        | (settings or {})
    )
    spec = RunSpec(
        cfg.model_dump(),
        sweep_id=sweep[0] if sweep else None,
        sweep_name=sweep[1] if sweep else None,
    )
    store = EpochWriter(engine)
    if status == "queued":
        return store.create_run(spec)
    run_id = store.create_run(spec, status="running")
    n = depth + 1
    assert len(grad_norms) == n
    kinds = ["hidden"] * depth + ["output"]
    store.record_layers(
        run_id, [LayerInfo(i, f"linears.{i}", kinds[i], "relu", 4, 4, 20) for i in range(n)]
    )
    for epoch in range(1, (recorded or epochs) + 1):
        stats = [
            {
                "grad_norm": g,
                "grad_mean_abs": g / 10,
                "grad_std": g / 10,
                "grad_max_abs": g,
                "weight_norm": 1.0,
                "update_ratio": 1e-3,
                "act_mean": 0.3,
                "act_std": 0.2,
                "saturated_frac": math.nan,
                "dead_frac": 0.0,
                "grad_hist": HIST,
            }
            for g in grad_norms
        ]
        metrics = {
            "train_loss": 0.3,
            "train_acc": test_acc,
            "test_loss": 0.3,
            "test_acc": test_acc,
            "pred_std": pred_std,
            "seconds": 0.01,
        }
        store.record_epoch(run_id, EpochRecord(epoch, metrics, stats))
    if status != "running":
        store.finish_run(run_id, status, final=FinalMetrics(test_acc=test_acc, pred_std=pred_std))
    return run_id
