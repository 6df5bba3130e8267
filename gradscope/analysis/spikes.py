"""The live warning before the NaN: a per-block check of each layer's per-step gradient norm
against the layer's own running level.

Fed by the block reductions that already run (gradscope.runner.gradient_stats.EpochGradStats
hands each reduced block's per-step norms, [steps, layers], as a numpy array): a few vectorised
numpy ops per block of 16 steps, no extra pass over the gradients. Torch-free.

The level of a layer is the larger of its early level (the median of its first WARMUP_STEPS
steps) and a running level (an average of log10 norms, block by block, that follows slow drift);
a step whose norm is more than SPIKE_FACTOR times the level is a `spike`, reported at the step it
first crossed the bar. The block being checked is compared with the level before it, so a spike
never raises its own bar; the run's first block is split where the warm-up ends. A layer warns
again only when its factor grows another REWARN_FACTOR times (an explosion is one warning per
decade, not one per step), and a non-finite norm is warned once per run.

A `growth` warning is the trend before the spike: a layer's norm rising on each of TREND_STEPS
consecutive steps by at least 1.4x, 10x in all, to at least TREND_ABOVE times its level; its
message projects the steps left until the norm overflows float32 at that rate. The thresholds
were chosen on the zoo (benchmarks/diagnosis_zoo.py) and a few built-in runs: docs/diagnosis.md
gives the lead times and false warnings measured.

One checker serves a batched group (`members`): every column is judged on its own numbers, so
a member's warnings are its solo run's.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SPIKE_FACTOR = 30.0  # a step's gradient norm this many times the layer's level is a spike
WARMUP_STEPS = 8  # steps per layer before its level is trusted
REWARN_FACTOR = 10.0  # a layer warns again when its factor grows this much more
RUNNING_WEIGHT = 0.75  # weight of each block's mean log10 norm in the running level
MAX_WARNINGS = 200  # per run: a run that explodes in every layer stays readable
# The growth trend: a layer's norm rising on each of TREND_STEPS consecutive steps by at least
# TREND_STEP_DECADES (1.4x) a step, TREND_DECADES (10x) in all, to at least TREND_ABOVE times
# its level, is an overflow on its way. A net waking up from a vanished start grows too, but
# about 0.04 decades (10%) a step (a depth-10 ReLU MLP with Adam: 3 decades over 80 steps).
TREND_STEPS = 5
TREND_STEP_DECADES = 0.15
TREND_DECADES = 1.0
TREND_ABOVE = 3.0
FLOAT32_MAX_LOG10 = 38.5  # log10 of float32's largest value: where a growing norm overflows


@dataclass(frozen=True)
class Warning_:
    """One live warning: what was flagged, where, and against what level."""

    kind: str  # "spike" or "nonfinite"
    epoch: int
    step: int  # 1-based, counted over the whole run
    layer: int
    value: float
    baseline: float
    factor: float
    message: str
    # The group member it belongs to (a batched engine's stack position owner); 0 for a
    # watched model. Not stored: each member's warnings go to its own run.
    member: int = 0

    def to_json(self) -> dict[str, object]:
        found = dict(vars(self))
        found.pop("member")
        return found


class SpikeChecker:
    """Per-layer running levels of one device group's layers (`layers`: their run indices).

    `members` (one per column, default all 0) says which run each column belongs to, so one
    checker serves a batched group: every column is judged on its own numbers only (a member's
    warnings are its solo run's), and the once-per-run limits hold per member."""

    def __init__(
        self,
        layers: list[int],
        on_warning: Callable[[Warning_], None],
        members: list[int] | None = None,
    ) -> None:
        self.layers = np.asarray(layers)
        n = len(layers)
        self.members = np.asarray(members if members is not None else [0] * n)
        self._on_warning = on_warning
        self._early: list[list[float]] = [[] for _ in range(n)]
        self._early_level = np.full(n, np.nan)
        self._running = np.full(n, np.nan)  # log10
        self._warned_at = np.zeros(n)  # the factor of the layer's last warning (0: none)
        self._tail = np.full((TREND_STEPS, n), np.nan)  # the last steps' log10 norms
        self._trend_at = np.full(n, -np.inf)  # log10 norm at the layer's last growth warning
        self._nonfinite_told: set[int] = set()  # members told of a non-finite norm
        self._steps = 0  # steps checked so far, over the run
        self._epoch = 0
        self._count: dict[int, int] = {}  # warnings per member
        self._lock = threading.Lock()

    def select(self, columns: list[int]) -> None:
        """Keep only these columns (in this order): a batched group's members that left."""
        with self._lock:
            at = np.asarray(columns, dtype=int)
            self.layers, self.members = self.layers[at], self.members[at]
            self._early = [self._early[i] for i in columns]
            self._early_level = self._early_level[at]
            self._running = self._running[at]
            self._warned_at = self._warned_at[at]
            self._tail, self._trend_at = self._tail[:, at], self._trend_at[at]

    def block(self, norms: np.ndarray, done_in_epoch: int) -> None:
        """Check a block of per-step norms [n, layers]; `done_in_epoch` steps of the epoch came
        before it (0 starts a new epoch)."""
        with self._lock:
            if done_in_epoch == 0:
                self._epoch += 1
            # The run's first block is split where the warm-up ends, so its later steps are
            # checked against the early level already (a fast explosion is over by step ~10).
            need = WARMUP_STEPS - min((len(e) for e in self._early), default=WARMUP_STEPS)
            parts = [norms[:need], norms[need:]] if 0 < need < len(norms) else [norms]
            for part in parts:
                first_step = self._steps + 1
                self._steps += part.shape[0]
                self._check(part, first_step)
                self._trend(part, first_step)
                self._learn(part)

    def _check(self, norms: np.ndarray, first_step: int) -> None:
        finite = np.isfinite(norms)
        untold = set(self.members[~finite.all(axis=0)].tolist()) - self._nonfinite_told
        if untold:
            for s, j in np.argwhere(~finite):  # step-major: each member's first one
                member = int(self.members[j])
                if member in self._nonfinite_told:
                    continue
                self._nonfinite_told.add(member)
                self._emit(
                    "nonfinite", first_step + int(s), int(j), float(norms[s, j]), math.nan, math.nan
                )
        # NaN until the layer's early level exists: no warning during the warm-up.
        level = np.where(
            np.isnan(self._early_level), np.nan, np.fmax(self._early_level, 10.0**self._running)
        )
        if not np.isfinite(level).any():
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            factors = np.where(finite, norms, 0.0) / np.where(level > 0, level, np.nan)
        peak = np.nanmax(np.where(np.isfinite(factors), factors, 0.0), axis=0)  # per layer
        bar = np.maximum(SPIKE_FACTOR, self._warned_at * REWARN_FACTOR)
        for j in np.flatnonzero(peak > bar):
            # The step it first crossed the bar (when a per-step check would have seen it),
            # with the block's peak factor (what the rewarning is measured by).
            s = int(np.argmax(np.where(np.isfinite(factors[:, j]), factors[:, j], 0.0) > bar[j]))
            self._warned_at[j] = peak[j]
            self._emit(
                "spike", first_step + s, int(j), float(norms[s, j]), float(level[j]), float(peak[j])
            )

    def _trend(self, norms: np.ndarray, first_step: int) -> None:
        """The growth trend, vectorised over the block and the layers: each step's rise over
        the step before (the previous block's last steps carried in `_tail`)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(np.where(np.isfinite(norms) & (norms > 0), norms, np.nan))
        ext = np.concatenate([self._tail, logs])  # [TREND_STEPS + n, layers]
        self._tail = ext[-TREND_STEPS:]
        k = TREND_STEPS
        rises = ext[1:] - ext[:-1]  # NaN (a zero or non-finite norm) breaks a streak
        steady = np.ones_like(ext[k:], dtype=bool)
        for back in range(k):  # every one of the last k rises is steep
            steady &= rises[k - 1 - back : len(rises) - back] >= TREND_STEP_DECADES
        total = ext[k:] - ext[:-k]
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.log10(np.fmax(self._early_level, 10.0**self._running))
        high = ext[k:] >= level + math.log10(TREND_ABOVE)  # NaN level (warm-up): never
        new = ext[k:] >= self._trend_at + math.log10(REWARN_FACTOR)
        fired = steady & (total >= TREND_DECADES) & high & new
        for j in np.flatnonzero(fired.any(axis=0)):
            s = int(np.argmax(fired[:, j]))
            now, before = float(ext[k + s, j]), float(ext[s, j])
            self._trend_at[j] = now
            slope = (now - before) / k
            left = (FLOAT32_MAX_LOG10 - now) / slope
            self._emit(
                "growth",
                first_step + s,
                int(j),
                10.0**now,
                10.0**before,
                10.0 ** (now - before),
                left,
            )

    def _learn(self, norms: np.ndarray) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(np.where(np.isfinite(norms) & (norms > 0), norms, np.nan))
        for j, early in enumerate(self._early):
            if len(early) < WARMUP_STEPS:
                column = norms[:, j]
                early.extend(
                    float(v) for v in column[np.isfinite(column)][: WARMUP_STEPS - len(early)]
                )
                if len(early) >= WARMUP_STEPS:
                    self._early_level[j] = float(np.median(early))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: no level yet
            block_level = np.nanmean(logs, axis=0)
        blend = (1 - RUNNING_WEIGHT) * self._running + RUNNING_WEIGHT * block_level
        self._running = np.where(
            np.isnan(self._running),
            block_level,
            np.where(np.isnan(block_level), self._running, blend),
        )

    def _emit(
        self,
        kind: str,
        step: int,
        j: int,
        value: float,
        baseline: float,
        factor: float,
        steps_left: float = math.nan,
    ) -> None:
        member = int(self.members[j])
        if self._count.get(member, 0) >= MAX_WARNINGS:
            return
        self._count[member] = self._count.get(member, 0) + 1
        layer = int(self.layers[j])
        if kind == "nonfinite":
            message = f"step {step}: layer {layer}'s gradient norm became non-finite ({value})"
        elif kind == "growth":
            per_step = factor ** (1 / TREND_STEPS)
            message = (
                f"step {step}: layer {layer}'s gradient norm grew {factor:.0f}x over the last "
                f"{TREND_STEPS} steps (about {per_step:.1f}x a step, now {value:.2e}); at this "
                f"rate it overflows float32 in about {steps_left:.0f} steps"
            )
        else:
            message = (
                f"step {step}: layer {layer}'s gradient norm {value:.2e} is {factor:.0f}x its "
                f"running level {baseline:.2e}"
            )
        self._on_warning(
            Warning_(kind, self._epoch, step, layer, value, baseline, factor, message, member)
        )
