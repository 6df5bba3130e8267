"""The kinds of live warning (table run_warnings' `kind`): written once here, read by the live
checks that emit them (gradscope.analysis.spikes), the store and its summary (db/warnings.py),
the share validator, the diagnosis and the badges."""

from __future__ import annotations

SPIKE = "spike"  # a layer's gradient norm jumped far above its own running level
GROWTH = "growth"  # a steady exponential rise, on its way to overflow
NONFINITE = "nonfinite"  # a layer's gradient norm became NaN or inf
WARNING_KINDS = (SPIKE, GROWTH, NONFINITE)
# The warnings that foretell an explosion (before the non-finite gradient itself).
TREND_WARNINGS = (SPIKE, GROWTH)
