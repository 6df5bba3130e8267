"""scikit-learn's make_moons, make_circles and stratified train_test_split, without scikit-learn.

Importing scikit-learn costs about a second, more than a tiny run's training. These are the same
algorithms drawing from the same `np.random.RandomState(seed)` in the same order (scikit-learn
1.x, BSD-3-Clause), so a seed gives bit-identical data and splits (tests/test_datasets.py checks
that against scikit-learn itself). scikit-learn is still used for `breast_cancer`.
"""

from __future__ import annotations

import math

import numpy as np


def _shuffled(
    x: np.ndarray, y: np.ndarray, noise: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn.utils.shuffle, then Gaussian noise, as the generators end."""
    order = np.arange(len(y))
    rng.shuffle(order)
    x, y = x[order], y[order]
    return x + rng.normal(scale=noise, size=x.shape), y


def _halves(n: int) -> tuple[int, int, np.ndarray]:
    out, inside = n // 2, n - n // 2
    return out, inside, np.hstack([np.zeros(out, dtype=np.intp), np.ones(inside, dtype=np.intp)])


def make_moons(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (sklearn.datasets.make_moons, shuffle=True)."""
    out, inside, y = _halves(n)
    rng = np.random.RandomState(seed)
    outer, inner = np.linspace(0, np.pi, out), np.linspace(0, np.pi, inside)
    x = np.vstack(
        [
            np.append(np.cos(outer), 1 - np.cos(inner)),
            np.append(np.sin(outer), 1 - np.sin(inner) - 0.5),
        ]
    ).T
    return _shuffled(x, y, noise, rng)


def make_circles(n: int, noise: float, factor: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A circle inside a circle (sklearn.datasets.make_circles, shuffle=True)."""
    out, inside, y = _halves(n)
    rng = np.random.RandomState(seed)
    outer = np.linspace(0, 2 * np.pi, out, endpoint=False)
    inner = np.linspace(0, 2 * np.pi, inside, endpoint=False)
    x = np.vstack(
        [
            np.append(np.cos(outer), np.cos(inner) * factor),
            np.append(np.sin(outer), np.sin(inner) * factor),
        ]
    ).T
    return _shuffled(x, y, noise, rng)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` each class gets, ties broken at random (sklearn's helper)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(
    n_samples: int, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: train_test_split(test_size=test_fraction,
    random_state=seed, stratify=y). Raises ValueError where scikit-learn would."""
    n_test = math.ceil(test_fraction * n_samples)
    n_train = n_samples - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"{n_samples} samples leave an empty train or test set")
    classes, y_indices, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError("the least populated class has only 1 member, too few to split")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"train ({n_train}) and test ({n_test}) sizes must be at least the number of classes"
        )
    by_class = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, rows in enumerate(by_class):
        rows = rows.take(rng.permutation(counts[i]), mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)
