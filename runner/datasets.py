"""Datasets as standardized tensors with a seeded, stratified train/test split."""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from gradscope.runner import synthetic
from gradscope.vocab.config import RunConfig
from gradscope.vocab.csv_files import MAX_CSV_ROWS, DatasetError, csv_rows


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


def _read_csv(path: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    rows = csv_rows(path, label, MAX_CSV_ROWS)
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
