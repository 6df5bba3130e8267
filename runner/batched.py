"""Fast sweeps: a sweep's same-shape runs trained together as one batched ensemble.

`train_group()` is the autograd reference loop (tests/reference_loop.py) for K members at once:
each member is built by the
ordinary constructor under its own seed, gets its own data (loaded with its own seed, as a solo
run would), its own shuffle order and its own learning rate, and is recorded through its own
recorder exactly as a solo run would be. Nothing is computed across members (no global norm or
clipping), so a diverging or cancelled member cannot change the others' numbers; members that
finish (completed, diverged, cancelled, failed) leave the stack at the end of the epoch.

A solo run is a group of one: `gradscope.runner.execute` trains every built-in run through this
engine
(`execute_run` and `execute_group` side by side there); the autograd loop in
tests/reference_loop.py is the
reference the tests compare it with. `gradscope.vocab.grouping` says which runs may share a group.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from gradscope.analysis.spikes import SpikeChecker, Warning_
from gradscope.runner.datasets import Dataset, load_dataset
from gradscope.runner.gradient_stats import EpochGradStats, activation_stats, divergence, epoch_rows
from gradscope.runner.networks import build_model
from gradscope.runner.recording import (
    DecisionGridMaker,
    EpochBatch,
    Recorder,
    grid_epochs,
    test_points,
)
from gradscope.runner.stacked_mlp import StackedMLP, StackedOptimizer
from gradscope.vocab.config import RunConfig
from gradscope.vocab.grouping import group_key
from gradscope.vocab.records import EpochRecord

STOP_CHECK_SECONDS = 1.0


@dataclass
class TrainResult:
    status: str  # completed | diverged | cancelled | interrupted
    epochs_done: int
    final: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available here")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# Floats per activation tensor in the end-of-epoch passes (1 MB). At 1 << 17 a 48x48 decision
# grid went through one member at a time; 16-member groups of the sweep yardstick (depth 10,
# width 32, 20 epochs) took 1.21 s here against 1.28 s, and 1 << 20 or more was slower again
# (1.25-1.27 s: the big tensors' page faults, see _chunks).
EVAL_CHUNK_ELEMENTS = 1 << 18

# -- training --------------------------------------------------------------------------------


@dataclass
class _Member:
    """One member's own things: config, data, recorder, shuffle generator, grid."""

    cfg: RunConfig
    data: Dataset
    recorder: Recorder
    shuffle: torch.Generator
    grid: DecisionGridMaker | None
    grid_at: set[int]
    last: dict[str, float]
    result: TrainResult | None = None


def _raise_or(answer: bool | Exception) -> bool:
    if isinstance(answer, Exception):
        raise answer
    return answer


def error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def train_group(
    cfgs: Sequence[RunConfig],
    recorders: Sequence[Recorder],
    should_stop: Callable[[], str | None] = lambda: None,
    on_done: Callable[[int, TrainResult], None] | None = None,
    epoch_batch: EpochBatch | None = None,
) -> list[TrainResult]:
    """Train same-shape runs as one batched model; returns each member's TrainResult.

    Like `train()`: one recorder call per member per epoch; `should_stop` (for the whole group,
    e.g. a worker shutting down) is checked at every epoch end and about once a second. A
    recorder may also have `poll() -> bool`, called about once a second mid-epoch: True
    cancels that member (as `should_stop` returning "cancelled" would for a solo run).
    A member's recorder raising ends that member `failed` (as `execute_run` would) and the
    others go on; anything else raises. `on_done(k, result)` is called as each member ends.
    With `epoch_batch`, the members' epochs are stored by one `epochs()` call per group epoch
    (one database transaction) instead of each recorder's `epoch()`; its per-member answers
    are used exactly as the recorders' would be (an exception fails only that member).
    """
    if len(cfgs) != len(recorders) or not cfgs:
        raise ValueError("train_group needs one recorder per config, and at least one config")
    keys = {group_key(c) for c in cfgs}
    if len(keys) > 1:
        raise ValueError("configs of one group must share their group_key (shape, data, optimizer)")
    device = resolve_device(cfgs[0].device)
    with torch.no_grad():
        return _GroupTraining(cfgs, recorders, should_stop, on_done, device, epoch_batch).run()


class _GroupTraining:
    """The state of one group's training; `run()` reads top to bottom like `train()`."""

    def __init__(
        self,
        cfgs: Sequence[RunConfig],
        recorders: Sequence[Recorder],
        should_stop: Callable[[], str | None],
        on_done: Callable[[int, TrainResult], None] | None,
        device: torch.device,
        epoch_batch: EpochBatch | None = None,
    ) -> None:
        self.device = device
        self.epoch_batch = epoch_batch
        self.should_stop = should_stop
        self.on_done = on_done
        self.members: list[_Member] = []
        models = []
        for cfg, recorder in zip(cfgs, recorders, strict=True):
            data = load_dataset(cfg)
            torch.manual_seed(cfg.seed)  # as train() does: the member is its solo run's model
            models.append(build_model(cfg, data.n_features))
            two_d = data.n_features == 2
            self.members.append(
                _Member(
                    cfg,
                    data,
                    recorder,
                    torch.Generator().manual_seed(cfg.seed),
                    DecisionGridMaker(data, device) if two_d else None,
                    grid_epochs(cfg.epochs),
                    {},
                )
            )
        shapes = {(m.data.x_train.shape, m.data.x_test.shape) for m in self.members}
        if len(shapes) > 1:
            raise ValueError(f"members' datasets differ in shape: {sorted(shapes)}")
        self.layers = models[0].layer_infos()
        self.kinds = [info.activation for info in self.layers]
        self.stack = StackedMLP(models, device)
        self.optimizer = StackedOptimizer(
            self.stack,
            cfgs[0].optimizer,
            [c.lr for c in cfgs],
            [c.momentum for c in cfgs],
        )
        self.active = list(range(len(cfgs)))  # member index of each stack position
        self.batch_size = cfgs[0].batch_size
        # The live warning before the NaN (gradscope.analysis.spikes): one checker for the
        # group, column l*K + p being layer l of stack position p, each judged on its own
        # numbers only, so a member's warnings are its solo run's.
        n_layers, k = len(self.layers), len(cfgs)
        self.spikes = SpikeChecker(
            [layer for layer in range(n_layers) for _ in range(k)],
            self._warned,
            [member for _ in range(n_layers) for member in range(k)],
        )
        self.pending: dict[int, list[Warning_]] = {}  # by member, not yet stored
        self._stack_data()

    # -- member bookkeeping ------------------------------------------------------------------
    def _end(self, k: int, result: TrainResult) -> None:
        member = self.members[k]
        if member.result is not None:
            return
        member.result = result
        if self.on_done is not None:
            self.on_done(k, result)

    def _call_recorder(self, k: int, call: Callable[[], bool | None]) -> bool:
        """Run one member's recorder call; a failure ends only that member. True: stop it."""
        try:
            return bool(call())
        except Exception as exc:  # noqa: BLE001 - one member's storage failing is its own
            self._end(k, TrainResult("failed", -1, {}, error_text(exc)))
            return True

    def _stack_data(self) -> None:
        """The active members' data as [K, N, ...] tensors on the device."""

        def stacked(name: str) -> Tensor:
            arrays = [getattr(self.members[k].data, name) for k in self.active]
            return torch.from_numpy(np.stack(arrays)).to(self.device)

        self.x_train, self.y_train = stacked("x_train"), stacked("y_train")
        self.x_test, self.y_test = stacked("x_test"), stacked("y_test")
        grids = [self.members[k].grid for k in self.active]
        self.grid_inputs = torch.stack([g.inputs for g in grids]) if grids[0] is not None else None
        n_train = self.x_train.shape[1]
        self.offsets = torch.arange(len(self.active), device=self.device).unsqueeze(1) * n_train
        k = len(self.active)
        # Each step's logits land here; the epoch's loss and accuracy are then two reductions
        # at its end instead of ~8 small ops per step.
        self.epoch_logits = torch.empty(k, n_train, device=self.device)
        self.loss_sum = torch.zeros(k, device=self.device)
        self.correct = torch.zeros(k, device=self.device)
        self.probe = EpochGradStats(self.stack.weight_sizes, k, self.device)
        self.probe.on_block = self._check_block

    def _store_epochs(
        self, members: list[int], records: list[EpochRecord]
    ) -> list[bool | Exception]:
        """Each member's answer for its stored epoch: stop it, go on, or what storing raised."""
        if self.epoch_batch is not None and members:
            try:
                return self.epoch_batch.epochs(members, records)
            except Exception as exc:  # noqa: BLE001 - the write failed for every member in it
                return [exc] * len(members)
        answers: list[bool | Exception] = []
        for k, record in zip(members, records, strict=True):
            try:
                answers.append(bool(self.members[k].recorder.epoch(record)))
            except Exception as exc:  # noqa: BLE001 - one member's storage failing is its own
                answers.append(exc)
        return answers

    def _warned(self, warning: Warning_) -> None:
        self.pending.setdefault(warning.member, []).append(warning)

    def _check_block(self, norms: Tensor, done: int) -> None:
        """The live spike check of a reduced block's per-step norms [n, L, K]: one host copy
        of n * L * K floats per block (on a CPU a view), a few numpy ops."""
        self.spikes.block(norms.reshape(norms.shape[0], -1).cpu().numpy(), done)

    def _store_warnings(self) -> None:
        """Each member's new live warnings to its recorder's `warnings(rows)` (when it has
        one): at the mid-epoch check (about once a second) and before an epoch is stored, so
        a run's warnings are in the database before the epoch that diverged."""
        pending, self.pending = self.pending, {}
        for k, found in pending.items():
            store = getattr(self.members[k].recorder, "warnings", None)
            if store is not None and self.members[k].result is None:
                rows = [w.to_json() for w in found]
                self._call_recorder(k, lambda store=store, rows=rows: store(rows))

    def _compact(self) -> None:
        """Drop members that have ended from the stack (at an epoch boundary)."""
        keep = [p for p, k in enumerate(self.active) if self.members[k].result is None]
        if len(keep) == len(self.active):
            return
        was = len(self.active)
        self.spikes.select([la * was + p for la in range(len(self.layers)) for p in keep])
        self.active = [self.active[p] for p in keep]
        if not keep:
            return
        old = self.stack.members
        index = torch.tensor(keep, device=self.device)
        self.stack.select(index)
        self.optimizer.select(index, old)
        self._stack_data()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> list[TrainResult]:
        layers, device = self.layers, str(self.device)
        for k, member in enumerate(self.members):
            points = test_points(member.data) if member.grid is not None else None
            self._call_recorder(k, lambda r=member.recorder, p=points: r.start(layers, p, device))
        self._compact()
        epochs = max(m.cfg.epochs for m in self.members)
        for epoch in range(1, epochs + 1):
            if not self.active:
                break
            started = time.perf_counter()
            if self._train_epoch(epoch):
                break
            records = self._measure(epoch, started)
            self._record(epoch, records)
            self._compact()
        results = [m.result for m in self.members]
        assert all(r is not None for r in results), "every member ends by its last epoch"
        return results  # type: ignore[return-value]

    def _train_epoch(self, epoch: int) -> bool:
        """One pass over every member's shuffled training data. True: the group was stopped."""
        n_train = self.x_train.shape[1]
        # Each member's own permutation from its own generator, exactly as train() draws it.
        perms = torch.stack(
            [torch.randperm(n_train, generator=self.members[k].shuffle) for k in self.active]
        ).to(self.device)
        rows = (perms + self.offsets).reshape(-1)
        x_epoch = self.x_train.reshape(-1, self.x_train.shape[2])[rows].view(*perms.shape, -1)
        y_epoch = self.y_train.reshape(-1)[rows].view(perms.shape)
        self.probe.begin(self.stack.flat_weights)
        next_check = time.monotonic() + STOP_CHECK_SECONDS
        for start in range(0, n_train, self.batch_size):
            end = min(start + self.batch_size, n_train)
            xb, yb = x_epoch[:, start:end], y_epoch[:, start:end]
            logits = self.stack.forward(xb, for_backward=True)
            # BCE-with-logits summed over the batch, divided by its length, per member: the
            # gradient autograd computes for train()'s loss, and no mixing across members.
            self.stack.backward(torch.sigmoid(logits).sub_(yb).mul_(1.0 / (end - start)))
            # Gradients are read after backward and before the step, as in train().
            self.probe.step(self.stack.flat_weight_grads)
            self.optimizer.step()
            self.epoch_logits[:, start:end].copy_(logits)
            if time.monotonic() > next_check:
                next_check = time.monotonic() + STOP_CHECK_SECONDS
                if self._check_mid_epoch(epoch):
                    return True
        # Summed per member over the epoch as train() sums its batches' losses (one
        # reduction instead of one per batch: the same sum within float32 rounding).
        self.loss_sum = torch.nn.functional.binary_cross_entropy_with_logits(
            self.epoch_logits, y_epoch, reduction="none"
        ).sum(dim=1)
        self.correct = ((self.epoch_logits > 0) == (y_epoch > 0.5)).sum(dim=1)
        return False

    def _check_mid_epoch(self, epoch: int) -> bool:
        self._store_warnings()
        reason = self.should_stop()
        if reason:
            for k in self.active:
                self._end(k, TrainResult(reason, epoch - 1, self.members[k].last))
            return True
        for k in self.active:
            member = self.members[k]
            poll = getattr(member.recorder, "poll", None)
            if member.result is None and poll is not None and self._call_recorder(k, poll):
                # It stays in the stack until the epoch ends, unrecorded, then leaves.
                self._end(k, TrainResult("cancelled", epoch - 1, member.last))
        return False

    def _chunks(self, points: int) -> list[slice]:
        """Stack positions in slices whose activations stay small on a CPU: big [K, N, width]
        tensors make the allocator hand memory back to the system and fault it in again every
        epoch (measured at K=16: the end-of-epoch passes took twice as long, in page faults)."""
        k = len(self.active)
        if self.device.type != "cpu":
            return [slice(0, k)]
        widest = max(max(shape) for shape in self.stack.shapes)
        per = max(1, EVAL_CHUNK_ELEMENTS // (points * widest))
        return [slice(s, min(s + per, k)) for s in range(0, k, per)]

    def _test_pass(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits [K, N_test] and activation health ([L, K] each) on the test split."""
        logits, health = [], []
        for members in self._chunks(self.x_test.shape[1]):
            layers: list[dict[str, Tensor]] = []

            def measure(a: Tensor, layers: list[dict[str, Tensor]] = layers) -> None:
                layers.append(activation_stats([a], [self.kinds[len(layers)]]))

            logits.append(self.stack.forward(self.x_test[members], measure, members=members))
            health.append({k: torch.cat([s[k] for s in layers]) for k in layers[0]})
        return torch.cat(logits), {k: torch.cat([h[k] for h in health], dim=1) for k in health[0]}

    def _grid_probs(self) -> Tensor:
        assert self.grid_inputs is not None
        parts = [
            torch.sigmoid(self.stack.forward(self.grid_inputs[members], members=members))
            for members in self._chunks(self.grid_inputs.shape[1])
        ]
        return torch.cat(parts).cpu()

    def _measure(self, epoch: int, started: float) -> list[tuple[EpochRecord, dict[str, float]]]:
        """The end-of-epoch test pass for every member and one device-to-host copy, as in
        train()'s `_measure_epoch`; returns a record per stack position."""
        logits, health = self._test_pass()
        probs = torch.sigmoid(logits)
        test_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, self.y_test, reduction="none"
        ).mean(dim=1)
        test_acc = ((logits > 0) == (self.y_test > 0.5)).float().mean(dim=1)
        grads = self.probe.finish(self.stack.flat_weights)
        n_train = self.x_train.shape[1]
        hist = grads.pop("grad_hist").to(torch.int32).cpu().numpy()  # [L, K, slots]
        per_layer = torch.stack([*grads.values(), *health.values()], dim=2)  # [L, K, stats]
        epoch_values = torch.stack(
            [
                self.loss_sum / n_train,
                self.correct / n_train,
                test_loss,
                test_acc,
                probs.std(dim=1, unbiased=False),
            ]
        )
        # The one sync of the epoch (plus the grid at the few epochs that record it).
        table = per_layer.cpu().numpy()
        values = epoch_values.cpu().numpy()
        wants_grid = [epoch in self.members[k].grid_at for k in self.active]
        grid_probs = None
        if self.grid_inputs is not None and any(wants_grid):
            grid_probs = self._grid_probs()
        # The group's epoch took this long: every member's epoch shared that wall time.
        seconds = time.perf_counter() - started
        names = (*grads.keys(), *health.keys())
        out = []
        for pos, k in enumerate(self.active):
            layers = range(len(self.layers))
            stats, metrics = epoch_rows(
                names,
                (table[layer, pos].tolist() for layer in layers),
                (hist[layer, pos] for layer in layers),
                values[:, pos].tolist(),
                seconds,
            )
            grid = self.members[k].grid
            grid_record = None
            if grid is not None and grid_probs is not None and wants_grid[pos]:
                grid_record = grid.record(grid_probs[pos])
            out.append((EpochRecord(epoch, metrics, stats, grid_record), metrics))
        return out

    def _record(self, epoch: int, records: list[tuple[EpochRecord, dict[str, float]]]) -> None:
        """Each member's epoch to its recorder, then its health and end, as train() decides."""
        self._store_warnings()
        # Cancelled mid-epoch: its unfinished epoch is not recorded.
        todo = [
            (k, rec)
            for k, rec in zip(self.active, records, strict=True)
            if self.members[k].result is None
        ]
        answers = self._store_epochs([k for k, _ in todo], [rec for _, (rec, _) in todo])
        for (k, (record, metrics)), answer in zip(todo, answers, strict=True):
            member = self.members[k]
            cancelled = self._call_recorder(k, lambda a=answer: _raise_or(a))
            if member.result is not None:
                continue  # its recorder failed
            member.last = metrics
            diverged = divergence(epoch, metrics, record.layer_stats)
            if diverged:
                self._end(k, TrainResult("diverged", epoch, metrics, diverged))
            elif cancelled and epoch < member.cfg.epochs:
                self._end(k, TrainResult("cancelled", epoch, metrics))
        reason = self.should_stop()
        for k in self.active:
            member = self.members[k]
            if member.result is not None:
                continue
            # A member that stored all its epochs has completed, whatever was asked meanwhile.
            if epoch == member.cfg.epochs:
                self._end(k, TrainResult("completed", epoch, member.last))
            elif reason:
                self._end(k, TrainResult(reason, epoch, member.last))
