"""The live warning before the NaN: a per-block check of each layer's per-step gradient norm
against the layer's own level.

Fed by the block reductions that already run (gradscope.runner.gradient_stats.EpochGradStats
hands each reduced block's per-step norms, [steps, layers], as a numpy array): a few vectorised
numpy ops per block of 16 steps, no extra pass over the gradients. Torch-free.

The level of a layer is the larger of its early level (the median of its first WARMUP_STEPS
steps) and a running level (an average of log10 norms, block by block, that follows slow drift).
Before its first WARMUP_STEPS steps are in, a layer is judged against the median of the steps it
has had (from its EARLY_STEPS-th step on, one step at a time), so a run that blows up within
ten steps is still warned about. A step whose norm is more than SPIKE_FACTOR times the level is
a `spike`, reported at the step it first crossed the bar. A step is compared with the level
before it, so a spike never raises its own bar. A layer warns again only when its factor grows
another REWARN_FACTOR times (an explosion is one warning per decade, not one per step), and a
non-finite norm is warned once per run.

A `growth` warning is the trend before the spike, by either of two tests, to at least
TREND_ABOVE times the layer's level:
- steep: the norm rose on each of TREND_STEPS consecutive steps by at least 1.4x, 10x in all;
- steady: a straight line fitted to the log norms of the last FIT_STEPS steps rises at least
  FIT_SLOPE decades a step (1.26x) and explains at least FIT_R2 of their variance: an
  exponential growth that noise keeps from rising on every single step.
Its message projects the steps left until the norm overflows float32 at that rate. The
thresholds were chosen on the zoo (benchmarks/diagnosis_zoo.py) and checked on held-out models
(benchmarks/diagnosis_holdout.py): docs/diagnosis.md gives the lead times and false warnings.

Steps are counted as the caller says (`step_of`: a watched model measured every N-th step
maps its measured steps to optimizer steps). One checker serves a batched group (`members`):
every column is judged on its own numbers, so a member's warnings are its solo run's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradscope.vocab.warning_kinds import GROWTH, NONFINITE, SPIKE

SPIKE_FACTOR = 30.0  # a step's gradient norm this many times the layer's level is a spike
WARMUP_STEPS = 8  # steps per layer before its early level is fixed
EARLY_STEPS = 3  # steps per layer before their median judges the next ones (the warm-up's level)
REWARN_FACTOR = 10.0  # a layer warns again when its factor grows this much more
RUNNING_WEIGHT = 0.75  # weight of each block's mean log10 norm in the running level
MAX_WARNINGS = 200  # per run: a run that explodes in every layer stays readable
# The steep growth: a layer's norm rising on each of TREND_STEPS consecutive steps by at least
# TREND_STEP_DECADES (1.4x) a step, TREND_DECADES (10x) in all, to at least TREND_ABOVE times
# its level, is an overflow on its way. A net waking up from a vanished start grows too, but
# about 0.04 decades (10%) a step (a depth-10 ReLU MLP with Adam: 3 decades over 80 steps).
TREND_STEPS = 5
TREND_STEP_DECADES = 0.15
TREND_DECADES = 1.0
TREND_ABOVE = 3.0
# The steady growth: a least-squares line through the last FIT_STEPS log10 norms, rising at
# least FIT_SLOPE decades a step (1.26x; 2.5x the wake-up's rate) with R^2 >= FIT_R2. Chosen
# on the zoo and 7 built-in runs (a grid of 3 windows x 4 slopes x 4 R^2 x 2 heights): the
# most diverging runs warned >= 10 steps ahead with no warning on a healthy one; 0.08 warned a
# built-in depth-10 ReLU Adam run waking up (1.22x a step for 11 steps) and a CNN's warm-up.
FIT_STEPS = 12
FIT_SLOPE = 0.1
FIT_R2 = 0.7
FLOAT32_MAX_LOG10 = 38.5  # log10 of float32's largest value: where a growing norm overflows
_TAIL = max(TREND_STEPS, FIT_STEPS - 1)  # earlier steps' log10 norms carried between blocks


def _median(values: list[float]) -> float:
    """np.median of a few finite floats (the middle one, or the mean of the two middle ones),
    without its ~40 us of overhead per call: the warm-up takes one per layer and step."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True)
class Warning_:
    """One live warning: what was flagged, where, and against what level."""

    kind: str  # one of gradscope.vocab.warning_kinds.WARNING_KINDS
    epoch: int
    step: int  # 1-based, counted over the whole run (optimizer steps)
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
    """Per-layer levels of one device group's layers (`layers`: their run indices).

    `members` (one per column, default all 0) says which run each column belongs to, so one
    checker serves a batched group: every column is judged on its own numbers only (a member's
    warnings are its solo run's), and the once-per-run limits hold per member. `step_of` maps
    the checker's 1-based count of the steps it was handed to the step a warning names
    (default: the same number)."""

    def __init__(
        self,
        layers: list[int],
        on_warning: Callable[[Warning_], None],
        members: list[int] | None = None,
        step_of: Callable[[int], int] | None = None,
    ) -> None:
        self.layers = np.asarray(layers)
        n = len(layers)
        self.members = np.asarray(members if members is not None else [0] * n)
        self._on_warning = on_warning
        self._step_of = step_of
        self._early: list[list[float]] = [[] for _ in range(n)]
        self._early_level = np.full(n, np.nan)
        self._provisional = np.full(n, np.nan)  # median of the early steps so far
        self._running = np.full(n, np.nan)  # log10
        self._warned_at = np.zeros(n)  # the factor of the layer's last warning (0: none)
        self._tail = np.full((_TAIL, n), np.nan)  # the last steps' log10 norms
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
            self._provisional = self._provisional[at]
            self._running = self._running[at]
            self._warned_at = self._warned_at[at]
            self._tail, self._trend_at = self._tail[:, at], self._trend_at[at]

    def block(self, norms: np.ndarray, done_in_epoch: int) -> None:
        """Check a block of per-step norms [n, layers]; `done_in_epoch` steps of the epoch came
        before it (0 starts a new epoch)."""
        with self._lock:
            if done_in_epoch == 0:
                self._epoch += 1
            # The run's first WARMUP_STEPS steps one at a time, each judged by the median of
            # the steps before it (a fast explosion is over by step ~10); counted over the run,
            # not per layer, so a batched member is split where its solo run is.
            need = min(max(WARMUP_STEPS - self._steps, 0), len(norms))
            parts = [norms[i : i + 1] for i in range(need)]
            if need < len(norms):
                parts.append(norms[need:])
            for part in parts:
                first_step = self._steps + 1
                self._steps += part.shape[0]
                with np.errstate(divide="ignore", invalid="ignore"):
                    logs = np.log10(np.where(np.isfinite(part) & (part > 0), part, np.nan))
                level = self._level()
                self._check(part, first_step, level)
                self._trend(logs, first_step, level)
                self._learn(part, logs)

    def _level(self) -> np.ndarray:
        """Each layer's level now: NaN until it has EARLY_STEPS steps."""
        return np.where(
            np.isnan(self._early_level),
            self._provisional,
            np.fmax(self._early_level, 10.0**self._running),
        )

    def _check(self, norms: np.ndarray, first_step: int, level: np.ndarray) -> None:
        finite = np.isfinite(norms)
        untold = set(self.members[~finite.all(axis=0)].tolist()) - self._nonfinite_told
        if untold:
            for s, j in np.argwhere(~finite):  # step-major: each member's first one
                member = int(self.members[j])
                if member in self._nonfinite_told:
                    continue
                self._nonfinite_told.add(member)
                self._emit(
                    NONFINITE, first_step + int(s), int(j), float(norms[s, j]), math.nan, math.nan
                )
        if not np.isfinite(level).any():
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            factors = np.where(finite, norms, 0.0) / np.where(level > 0, level, np.nan)
        peak = np.nanmax(np.where(np.isfinite(factors), factors, 0.0), axis=0)  # per layer
        bar = np.maximum(SPIKE_FACTOR, self._warned_at * REWARN_FACTOR)
        for j in np.flatnonzero(peak > bar):
            # The step it first crossed the bar (when a per-step check would have seen it),
            # told with that step's own factor (value / level, as the message reads); the
            # block's peak factor is what the rewarning is measured by.
            s = int(np.argmax(np.where(np.isfinite(factors[:, j]), factors[:, j], 0.0) > bar[j]))
            self._warned_at[j] = peak[j]
            self._emit(
                SPIKE,
                first_step + s,
                int(j),
                float(norms[s, j]),
                float(level[j]),
                float(factors[s, j]),
            )

    def _trend(self, logs: np.ndarray, first_step: int, level: np.ndarray) -> None:
        """The growth trend, vectorised over the block and the layers (`logs`: its log10
        norms, NaN where zero or non-finite): each step's rise over the step before, and a
        line through the last FIT_STEPS steps (earlier blocks' last steps carried in `_tail`)."""
        n = len(logs)
        ext = np.concatenate([self._tail, logs])  # [_TAIL + n, layers]
        self._tail = ext[-_TAIL:]
        now = ext[_TAIL:]  # this block's steps
        with np.errstate(divide="ignore", invalid="ignore"):
            # A NaN level (the first steps): never high.
            high = now >= np.log10(level) + math.log10(TREND_ABOVE)
        new = now >= self._trend_at + math.log10(REWARN_FACTOR)
        if not (high & new).any():
            return  # nothing could fire (a healthy run, nearly every block): skip the fits
        # Steep: every one of the last k rises is steep, 10x in all.
        k = TREND_STEPS
        rises = ext[1:] - ext[:-1]  # NaN (a zero or non-finite norm) breaks a streak
        steep = np.ones_like(now, dtype=bool)
        for back in range(k):
            at = _TAIL - 1 - back  # the rise into step t - back, for each step t of the block
            steep &= rises[at : at + n] >= TREND_STEP_DECADES
        steep &= now - ext[_TAIL - k : _TAIL - k + n] >= TREND_DECADES
        # Steady: the slope and R^2 of a least-squares line through each step's last window,
        # from running sums (a window's sums are differences of cumulative ones: no copy of
        # the windows); a window with a missing step (NaN) never counts.
        w = FIT_STEPS
        missing = np.isnan(ext)
        y = np.where(missing, 0.0, ext)
        t = np.arange(len(ext), dtype=float)[:, None]
        zero = np.zeros((1, y.shape[1]))
        sums = [np.concatenate([zero, np.cumsum(v, axis=0)]) for v in (y, t * y, y * y, missing)]
        s_y, s_ty, s_yy, s_nan = (c[w:][-n:] - c[:-w][-n:] for c in sums)
        t_mean = t[-n:] - (w - 1) / 2  # the mean step index of each window
        t_var = (w * w - 1) / 12 * w  # sum of squared deviations of w consecutive indices
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = (s_ty - t_mean * s_y) / t_var
            spread = s_yy - s_y * s_y / w
            r2 = slope * slope * t_var / spread
        steady = (s_nan == 0) & (slope >= FIT_SLOPE) & (r2 >= FIT_R2)
        fired = (steep | steady) & high & new
        for j in np.flatnonzero(fired.any(axis=0)):
            s = int(np.argmax(fired[:, j]))
            value = float(now[s, j])
            if steep[s, j]:
                span, rate = k, (value - float(ext[_TAIL - k + s, j])) / k
            else:
                span, rate = FIT_STEPS - 1, float(slope[s, j])
            self._trend_at[j] = value
            left = (FLOAT32_MAX_LOG10 - value) / rate
            self._emit(
                GROWTH,
                first_step + s,
                int(j),
                10.0**value,
                10.0 ** (value - rate * span),
                10.0 ** (rate * span),
                left,
                span,
            )

    def _learn(self, norms: np.ndarray, logs: np.ndarray) -> None:
        fixed = ~np.isnan(self._early_level)  # layers whose early level was fixed before
        # Per layer, its column as Python floats (one tolist, not a numpy op per layer).
        columns = norms.T.tolist() if not fixed.all() else []
        for j, early in enumerate(self._early if not fixed.all() else ()):
            if len(early) < WARMUP_STEPS:
                finite = [v for v in columns[j] if math.isfinite(v)]
                early.extend(finite[: WARMUP_STEPS - len(early)])
                if len(early) >= EARLY_STEPS:
                    self._provisional[j] = _median(early)
                if len(early) >= WARMUP_STEPS:
                    self._early_level[j] = _median(early)
                    positive = [v for v in early if v > 0]
                    # The running level starts from the early steps' mean log norm.
                    self._running[j] = np.log10(positive).mean() if positive else np.nan
        valid = ~np.isnan(logs)
        with np.errstate(invalid="ignore", divide="ignore"):  # an all-NaN column: no level yet
            block_level = np.where(valid, logs, 0.0).sum(axis=0) / valid.sum(axis=0)
        blend = (1 - RUNNING_WEIGHT) * self._running + RUNNING_WEIGHT * block_level
        updated = np.where(
            np.isnan(self._running),
            block_level,
            np.where(np.isnan(block_level), self._running, blend),
        )
        # Only layers whose early level was fixed before this block follow the running level.
        self._running = np.where(fixed, updated, self._running)

    def _emit(
        self,
        kind: str,
        counted: int,
        j: int,
        value: float,
        baseline: float,
        factor: float,
        steps_left: float = math.nan,
        span: int = TREND_STEPS,
    ) -> None:
        member = int(self.members[j])
        if self._count.get(member, 0) >= MAX_WARNINGS:
            return
        self._count[member] = self._count.get(member, 0) + 1
        step = self._step_of(counted) if self._step_of is not None else counted
        layer = int(self.layers[j])
        if kind == NONFINITE:
            message = f"step {step}: layer {layer}'s gradient norm became non-finite ({value})"
        elif kind == GROWTH:
            per_step = factor ** (1 / span)
            message = (
                f"step {step}: layer {layer}'s gradient norm grew {factor:.0f}x over the last "
                f"{span} measured steps (about {per_step:.2f}x a step, now {value:.2e}); at "
                f"this rate it overflows float32 in about {steps_left:.0f} more"
            )
        else:
            message = (
                f"step {step}: layer {layer}'s gradient norm {value:.2e} is {factor:.0f}x its "
                f"running level {baseline:.2e}"
            )
        self._on_warning(
            Warning_(kind, self._epoch, step, layer, value, baseline, factor, message, member)
        )
