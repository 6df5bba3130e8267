"""The CSV size cap, shared by the loader (runner.datasets) and the CLI's `--max-csv-mb`
without importing numpy into every command.

The cap is checked on the file's size before a byte is read. `--max-csv-mb` (train, submit,
worker, dashboard) sets it through an environment variable, so the processes a worker or a
dashboard starts inherit it.
"""

from __future__ import annotations

import math
import os

MAX_CSV_MB_ENV = "GRADSCOPE_MAX_CSV_MB"
DEFAULT_MAX_CSV_MB = 100


def max_csv_bytes() -> int:
    """The CSV size cap in bytes: $GRADSCOPE_MAX_CSV_MB, else DEFAULT_MAX_CSV_MB."""
    try:
        mb = float(os.environ.get(MAX_CSV_MB_ENV, DEFAULT_MAX_CSV_MB))
    except ValueError:
        mb = DEFAULT_MAX_CSV_MB
    if not math.isfinite(mb) or mb <= 0:
        mb = DEFAULT_MAX_CSV_MB
    return int(mb * 2**20)


def set_max_csv_mb(mb: int | None) -> int | None:
    """Make `mb` the cap for this process and the ones it starts (None: leave it)."""
    if mb is not None:
        os.environ[MAX_CSV_MB_ENV] = str(mb)
    return mb
