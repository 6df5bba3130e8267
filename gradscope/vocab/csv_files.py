"""A user's CSV dataset: its limits, and the row-by-row checks the loader
(gradscope.runner.datasets) and the pre-check share. Torch- and numpy-free, so the CLI and the
dashboard's form check a file before a run is created without loading either.

The cap is checked on the file's size before a byte is read. `--max-csv-mb` (train, submit,
worker, dashboard) sets it through an environment variable, so the processes a worker or a
dashboard starts inherit it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import TextIO

from gradscope.vocab.config import ConfigError, RunConfig

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


class DatasetError(ValueError):
    """A dataset could not be loaded (missing or malformed CSV, say); the message says why."""


# CSV limits (issue 14); the size cap is max_csv_bytes (--max-csv-mb).
MAX_CSV_ROWS = 1_000_000  # = RunConfig.samples' limit for synthetic data
MAX_CSV_COLUMNS = 1_000
# Rows the pre-check reads (train, submit, the form) before a run is created: cheap (~ms) and
# catches a wrong file at once; the rest of the file is checked as it is loaded.
PRECHECK_ROWS = 1_000


def _open_csv(path: str) -> tuple[TextIO, int]:
    """The opened file (BOM stripped) and its size, after the existence and size checks."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"CSV file not found: {path}")
    try:
        size = file.stat().st_size
        limit = max_csv_bytes()
        if size > limit:
            raise DatasetError(
                f"{path}: the file is {size / 2**20:,.1f} MB; at most {limit / 2**20:,.0f} MB "
                f"(--max-csv-mb)"
            )
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column name.
        return file.open(newline="", encoding="utf-8-sig"), size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def csv_rows(path: str, label: str, max_rows: int) -> Iterator[tuple[int, list[float]]]:
    """(line number, values) of each data row, checked as read: memory stays one row.

    Messages name rows and columns by number, never by content: they are shown in the
    dashboard, and the file may be one the reader should not see."""
    handle, _size = _open_csv(path)
    with handle:
        try:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DatasetError(f"{path}: the file is empty (no header row)")
            if len(header) > MAX_CSV_COLUMNS:
                raise DatasetError(f"{path}: more than {MAX_CSV_COLUMNS:,} columns")
            if label not in header:
                raise DatasetError(f"{path}: the header row has no column named {label!r}")
            col = header.index(label)
            yield col, []  # the header passed: its label column first
            count = 0
            for row in reader:
                if not row:
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise DatasetError(f"{path}: line {line} has a different number of columns")
                try:
                    values = [float(v) for v in row]
                except ValueError:
                    raise DatasetError(
                        f"{path}: every column must be numeric (line {line} is not)"
                    ) from None
                if not all(math.isfinite(v) for v in values):
                    raise DatasetError(f"{path}: contains NaN or infinite values (line {line})")
                if values[col] not in (0.0, 1.0):
                    raise DatasetError(
                        f"{path}: label column {label!r} must hold only 0 and 1 (line {line})"
                    )
                count += 1
                if count > max_rows:
                    raise DatasetError(f"{path}: more than {max_rows:,} data rows")
                yield line, values
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: is not UTF-8 text") from None
        except csv.Error as exc:
            raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def check_csv(path: str, label: str, rows: int = PRECHECK_ROWS) -> None:
    """Cheap pre-check before a run is created: the file exists and is within the size cap,
    its header names `label`, and its first `rows` rows are numeric with 0/1 labels.
    Raises DatasetError saying what is wrong."""
    with closing(csv_rows(path, label, MAX_CSV_ROWS)) as checked:
        for _ in islice(checked, rows + 1):  # the header, then `rows` rows
            pass


def precheck(cfg: RunConfig, rows: int = PRECHECK_ROWS) -> None:
    """For a CSV run, `check_csv` before the run is created; raises ConfigError naming the
    dataset field (`dataset: CSV file not found: data.csv`). Built-in datasets pass."""
    if cfg.is_csv:
        try:
            check_csv(cfg.csv_path, cfg.label, rows)
        except DatasetError as exc:
            raise ConfigError(f"dataset: {exc}") from None
