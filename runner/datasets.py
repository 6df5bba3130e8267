"""Datasets as standardized tensors with a seeded, stratified train/test split."""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np

from runner import synthetic
from runner.csv_limits import max_csv_bytes
from vocab.config import ConfigError, RunConfig


class DatasetError(ValueError):
    """A dataset could not be loaded (missing or malformed CSV, say); the message says why."""


@dataclass(frozen=True)
class Dataset:
    """Standardized float32 features and 0/1 float32 labels, split into train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # Mean and std used to standardize (from the training split), to map grids back.
    mean: np.ndarray
    std: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def _xor(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-1, 1, size=(n, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    return x + rng.normal(0, noise * 0.5, size=x.shape), y


def _spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    counts = (n // 2, n - n // 2)
    arms = []
    for sign, count in zip((1.0, -1.0), counts, strict=True):
        t = np.sqrt(rng.uniform(0, 1, size=count)) * 3 * np.pi
        arms.append(sign * np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi))
    x = np.concatenate(arms)
    y = np.concatenate([np.zeros(counts[0], np.int64), np.ones(counts[1], np.int64)])
    return x + rng.normal(0, noise * 0.1, size=x.shape), y


# CSV limits (issue 14); the size cap is in runner.csv_limits (--max-csv-mb).
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


def _rows(path: str, label: str, max_rows: int) -> Iterator[tuple[int, list[float]]]:
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
    with closing(_rows(path, label, MAX_CSV_ROWS)) as checked:
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


def _read_csv(path: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    rows = _rows(path, label, MAX_CSV_ROWS)
    col, _ = next(rows)
    # One growing float64 buffer, not a list of Python lists (~10x smaller at 1M rows).
    flat = array("d")
    n = 0
    for _line, values in rows:
        flat.extend(values)
        n += 1
    if n < 2:
        raise DatasetError(f"{path}: needs a header row and at least two data rows")
    values = np.frombuffer(flat, dtype=np.float64).reshape(n, -1)
    y = values[:, col]
    x = np.delete(values, col, axis=1)
    if x.shape[1] == 0:
        raise DatasetError(f"{path}: no feature columns besides the label")
    return x, y.astype(np.int64)


def raw_data(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels before splitting and scaling, seeded by cfg.seed."""
    if cfg.dataset == "moons":
        return synthetic.make_moons(cfg.samples, cfg.noise, cfg.seed)
    if cfg.dataset == "circles":
        return synthetic.make_circles(cfg.samples, cfg.noise * 0.5, 0.5, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.dataset == "xor":
        return _xor(cfg.samples, cfg.noise, rng)
    if cfg.dataset == "spirals":
        return _spirals(cfg.samples, cfg.noise, rng)
    if cfg.dataset == "breast_cancer":
        # Imported here: scikit-learn costs about a second; only this dataset needs it.
        from sklearn import datasets

        bunch = datasets.load_breast_cancer()
        return bunch.data, bunch.target
    return _read_csv(cfg.csv_path, cfg.label)


def load_dataset(cfg: RunConfig) -> Dataset:
    """The run's data: seeded stratified split, standardized on the training split."""
    x, y = raw_data(cfg)
    if len(np.unique(y)) < 2:
        raise DatasetError(f"{cfg.dataset}: needs examples of both classes")
    try:
        train_rows, test_rows = synthetic.stratified_split(len(y), y, cfg.test_fraction, cfg.seed)
    except ValueError as exc:
        raise DatasetError(f"{cfg.dataset}: cannot split into train and test ({exc})") from None
    x_tr, x_te, y_tr, y_te = x[train_rows], x[test_rows], y[train_rows], y[test_rows]
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0  # a constant column carries no signal; keep it finite

    def scale(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    return Dataset(
        scale(x_tr), y_tr.astype(np.float32), scale(x_te), y_te.astype(np.float32), mean, std
    )
