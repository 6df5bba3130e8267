"""One run in the terminal: its diagnosis, per-epoch metrics and per-layer gradient profile.

Pure rendering from `gradscope.db.queries.run_document`'s JSON-able dict to rich renderables; every
text
that came from the database goes through `gradscope.vocab.text.printable` first. Numbers that span
decades
(gradients, spreads) are in scientific notation; a per-layer bar on a log scale makes the
vanishing profile visible without a chart.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gradscope.analysis.diagnosis import Finding, diagnose, run_facts
from gradscope.vocab.fields import EPOCH_COLUMNS, STAT_COLUMNS
from gradscope.vocab.text import printable

BAR_WIDTH = 12  # characters for the longest bar: the layer table fits 80 columns
SEVERITY_STYLE = {"bad": "red", "warn": "yellow", "ok": "green"}


def frames(doc: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's epochs and layer statistics as the frames `diagnose` reads (NULL as NaN)."""
    epoch_cols = ("epoch", *EPOCH_COLUMNS)
    layer_cols = ("epoch", "layer", *STAT_COLUMNS)
    epochs = pd.DataFrame(doc["epochs"], columns=list(epoch_cols))
    layers = pd.DataFrame(doc["layer_stats"], columns=list(layer_cols))
    for frame, names in ((epochs, epoch_cols[1:]), (layers, layer_cols[2:])):
        for name in names:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return epochs, layers


def run_diagnosis(doc: dict[str, Any]) -> list[Finding]:
    epochs, layers = frames(doc)
    # What the model contains, its backward order, the probe's outcome (as the dashboard reads).
    facts = run_facts(doc.get("config"))
    warnings = pd.DataFrame(doc.get("warnings") or [], columns=list(WARNING_KEYS))
    return diagnose(
        epochs,
        layers,
        arch=str(doc["arch"]),
        status=str(doc["status"]),
        depth=int(doc["depth"]),
        dataset=str(doc.get("dataset") or ""),
        facts=facts if isinstance(facts, dict) else {},
        warnings=warnings,
        error=doc.get("error"),
    )


WARNING_KEYS = ("kind", "epoch", "step", "layer", "value", "baseline", "factor", "message")


def warnings_view(doc: dict[str, Any]) -> RenderableType | None:
    """The live warnings (gradient spikes before a NaN), at most 10 shown, or None."""
    found = doc.get("warnings") or []
    if not found:
        return None
    lines: list[RenderableType] = [Text(f"Warnings ({len(found)})", style="bold underline")]
    for w in found[:10]:
        lines.append(
            Text(
                f"[{printable(str(w['kind']))}] " + printable(str(w["message"] or "")),
                style="yellow",
            )
        )
    if len(found) > 10:
        lines.append(Text(f"... and {len(found) - 10} more (--json lists them all)", style="dim"))
    return Group(*lines)


def sci(value: float | None) -> str:
    """Scientific notation, or "-" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2e}"


def frac(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.0%}"


def diagnosis_view(findings: list[Finding]) -> RenderableType:
    """Each finding: a coloured severity and title, its explanation, and its usual cures."""
    parts: list[RenderableType] = []
    for f in findings:
        head = Text(f"[{f.severity}] ", style=SEVERITY_STYLE[f.severity])
        head.append(printable(f.title), style="bold")
        parts.append(head)
        # Indented as a block, so wrapped lines stay under their finding.
        parts.append(Padding(Text(printable(f.detail)), (0, 0, 0, 2)))
        for cure in f.cures:
            parts.append(Padding(Text("- " + printable(cure), style="dim"), (0, 0, 0, 2)))
    return Group(Text("Diagnosis", style="bold underline"), *parts)


def epochs_view(doc: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("epoch", "train loss", "train acc", "test loss", "test acc", "pred std"):
        table.add_column(col, justify="right", no_wrap=True)
    for e in doc["epochs"]:
        table.add_row(
            str(e["epoch"]),
            _fixed(e["train_loss"], 4),
            _fixed(e["train_acc"], 3),
            _fixed(e["test_loss"], 4),
            _fixed(e["test_acc"], 3),
            sci(e["pred_std"]),  # 1.5e-7 must not print as 0.0000
        )
    return table


def metrics_view(doc: dict[str, Any]) -> Table | None:
    """The free metrics (`run.log`): per name, how many values, the last one (its step and
    epoch), the smallest and largest. None when the run logged none."""
    metrics = doc.get("metrics") or {}
    if not metrics:
        return None
    table = Table(title="Logged metrics", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for col in ("metric", "values", "last step", "epoch", "last", "min", "max"):
        table.add_column(
            col, justify="left" if col == "metric" else "right", no_wrap=col != "metric"
        )
    for name, series in metrics.items():
        values = [v for v in series["value"] if v is not None and not math.isnan(v)]
        table.add_row(
            Text(printable(name)),  # a Text: a name like "[b]" is not rich markup
            str(series["rows"]),
            _text(series["step"][-1]),
            _text(series["epoch"][-1]),
            _general(series["value"][-1]),
            _general(min(values)) if values else "-",
            _general(max(values)) if values else "-",
        )
    return table


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _general(value: float | None) -> str:
    """A logged value of any scale: 4 significant digits; NaN as "nan", infinities as "inf"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"


def _fixed(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _log_bars(values: list[float | None], what: str) -> tuple[list[str], str]:
    """A bar per value on a shared log10 scale (whole decades from the smallest to the
    largest positive value), and the scale's caption; 0, NaN and inf get a word instead."""
    logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not logs:
        return ["" if v is None else _bar_word(v) for v in values], ""
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    hi = max(hi, lo + 1)
    bars = []
    for v in values:
        if v is None or not math.isfinite(v) or v <= 0:
            bars.append("" if v is None else _bar_word(v))
            continue
        n = max(1, round((math.log10(v) - lo) / (hi - lo) * BAR_WIDTH))
        bars.append("█" * n)
    return bars, f"bar: {what}, log scale, 10^{lo} (empty) to 10^{hi} (full)"


def _bar_word(v: float) -> str:
    if math.isnan(v):
        return "nan"
    return "inf" if math.isinf(v) else "0"


def layers_view(doc: dict[str, Any], epoch: int) -> Group:
    """The per-layer table at one epoch: kind, grad norm, max |g|, act_std, saturated or dead
    fraction, and a log-scale bar of the grad norm; for an epoch that turned non-finite, what
    was measured before it did."""
    rows = [s for s in doc["layer_stats"] if s["epoch"] == epoch]
    kinds = {la["index"]: la for la in doc["layers"]}
    moment = next((e["first_nonfinite_step"] for e in doc["epochs"] if e["epoch"] == epoch), None)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col, justify in (
        ("layer", "right"),
        ("kind", "left"),
        ("grad norm", "right"),
        ("max |g|", "right"),
        ("act std", "right"),
        ("sat/dead", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    # In an epoch that turned non-finite its statistics are NaN: the bar shows what was
    # finite before, the largest |g| over the steps before the first non-finite one.
    barred = "finite_max_abs" if moment else "grad_norm"
    if moment:
        table.add_column("max|g| pre", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, overflow="crop")
    bars, caption = _log_bars(
        [r.get(barred) for r in rows], "max |g| before it" if moment else "grad norm"
    )
    for r, bar in zip(rows, bars, strict=True):
        kind = printable(str(kinds.get(r["layer"], {}).get("kind") or ""))
        unit = r["saturated_frac"] if r["saturated_frac"] is not None else r["dead_frac"]
        cells = [
            str(r["layer"]),
            kind,
            sci(r["grad_norm"]),
            sci(r["grad_max_abs"]),
            sci(r["act_std"]),
            frac(unit),
        ]
        if moment:
            cells.append(sci(r.get("finite_max_abs")))
        table.add_row(*cells, bar)
    title = Text(f"Layers at epoch {epoch}", style="bold underline")
    notes: list[RenderableType] = []
    if caption:
        notes.append(Text(caption, style="dim"))
    if moment:
        notes.append(
            Text(
                f"A gradient became non-finite at step {moment} of this epoch; 'max|g| pre' "
                f"is the largest |g| over the steps before it.",
                style="dim",
            )
        )
    return Group(title, table, *notes)
