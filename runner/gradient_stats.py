"""Gradient, weight and activation statistics, cheap enough to take on every step.

The cost model (measured on this 2-core CPU, depth 20 x width 64, a ~1.6 ms step): per-layer
Python loops of small ops cost ~25% per step, and even a handful of whole-buffer ops per step
cost ~7%. So all of a model's weights live in one flat tensor (`FlatParameters`), a step only
copies its gradient into a ring of blocks, and each block of steps is reduced at once, off the
training thread when there is one to use (a large model on an accelerator keeps no ring: see
the rowless layout below). Nothing here calls `.item()` per step.

Every statistic has a leading member dimension K (1 for a solo run) so that a batched ensemble
of K same-shape models records each member exactly as a solo run would. The flat weight layout is
layer-major: layer l occupies `[offset_l, offset_l + K * n_l)` as a contiguous [K, n_l] block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gradscope.vocab.fields import (
    DIVERGENCE_LAYER_FIELDS,
    HIST_BINS,
    HIST_LOG10_MAX,
    HIST_LOG10_MIN,
    HIST_SLOTS,
)

SATURATED_LOW, SATURATED_HIGH = 0.01, 0.99
_BINS_PER_DECADE = HIST_BINS / (HIST_LOG10_MAX - HIST_LOG10_MIN)  # 4
# The histogram's count columns: 0 exact zeros, 1..HIST_BINS the bins (magnitudes beyond the
# range in the edge bins), HIST_BINS + 1 non-finite values; _fold puts them in HIST_SLOTS order.
_HIST_SPAN = HIST_BINS + 2
_HIST_ORDER = [*range(1, HIST_BINS + 1), 0, HIST_BINS + 1]
# A magnitude's column comes from its float32 bits, not from log10: log10 ran at ~9 ns an
# element on this CPU (241 ms for a 27.3M-weight step's gradient, three quarters of binning
# it), integer ops at under 1 ns. The bits of |g| (sign cleared) order as |g| does. Their top
# 11 (the exponent and 3 mantissa bits) name a cell an eighth of an octave wide, narrower than
# a bin (a factor 10^0.25), so a cell holds at most one bin edge: a magnitude's column is its
# cell's column above the edge, less one if its bits fall short of it (the sign of their
# difference; a compare and a bool add cost three times as much). Each edge is the first
# float32 at or above 10^(MIN + k / 4), so the bins are exact, as float64 log10 would place
# every float32 (float32 log10 misplaced some within a rounding of an edge).
_CELL_SHIFT = 20
_EDGE_TABLES: dict[str, tuple[Tensor, Tensor]] = {}


def _edge_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """Per cell of magnitude bits, int32: the column at and above its edge and the edge's bits
    (the cell's first bits when it holds no edge: every magnitude in it is at its column)."""
    key = str(device)
    if key not in _EDGE_TABLES:
        inf_bits = int(np.array(np.inf, dtype=np.float32).view(np.int32))
        edges = []
        for k in range(1, HIST_BINS):
            exact = 10.0 ** (HIST_LOG10_MIN + k / _BINS_PER_DECADE)
            edge = np.float32(exact)
            if float(edge) < exact:
                edge = np.nextafter(edge, np.float32(np.inf))
            edges.append(int(np.array(edge, dtype=np.float32).view(np.int32)))
        starts = np.arange(1 << (31 - _CELL_SHIFT), dtype=np.int64) << _CELL_SHIFT
        column = 1 + np.searchsorted(edges, starts, side="right")  # a cell's first magnitude
        column[starts >= inf_bits] = HIST_BINS + 1  # inf and NaN
        upper, first = column.copy(), starts.copy()
        for bits in edges:
            cell = bits >> _CELL_SHIFT
            if bits != starts[cell]:  # an edge inside the cell: one column more from it on
                upper[cell], first[cell] = column[cell] + 1, bits
        upper[0], first[0] = 1, 1  # exact zeros below 1, then subnormals (below range: bin 0)
        _EDGE_TABLES[key] = (
            torch.from_numpy(upper.astype(np.int32)).to(device),
            torch.from_numpy(first.astype(np.int32)).to(device),
        )
    return _EDGE_TABLES[key]


def _columns(bits: Tensor, cell: Tensor, edge: Tensor) -> Tensor:
    """Each magnitude's column (int32, written over `bits`) from its float32 bits with the
    sign cleared (int32); `cell` and `edge` are int32 scratch of its size."""
    upper, first = _edge_tables(bits.device)
    torch.bitwise_right_shift(bits, _CELL_SHIFT, out=cell)
    torch.index_select(first, 0, cell, out=edge)
    torch.sub(bits, edge, out=edge).bitwise_right_shift_(31)  # -1 short of the edge, else 0
    return torch.index_select(upper, 0, cell, out=bits).add_(edge)


def _magnitude_bits(values: Tensor, out: Tensor | None = None) -> Tensor:
    """The float32 bits of |values| (contiguous float32) as int32: |g| viewed as int32."""
    return torch.bitwise_and(values.view(torch.int32), 0x7FFFFFFF, out=out)


def _bin_columns(values: Tensor) -> Tensor:
    """Each element's column among the _HIST_SPAN counts (contiguous float32; new tensors)."""
    bits = _magnitude_bits(values)
    return _columns(bits, torch.empty_like(bits), torch.empty_like(bits))


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers whose weights have the same size, viewed as one [g, K, n] block."""

    first: int
    count: int
    offset: int
    numel: int  # per layer and member


def _cat(parts: list[Tensor]) -> Tensor:
    """Per-group [n, count, K] results as one [n, L, K] tensor (no copy for a single group)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _memory_order(t: Tensor) -> Tensor:
    """A tensor's elements as one flat view, in memory order (a channels_last gradient too:
    sums, maxima and counts do not depend on the order); a copy only when it has gaps."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    dense = t.permute(order)
    return dense.view(-1) if dense.is_contiguous() else dense.reshape(-1)


def group_layers(sizes: list[int], members: int) -> list[LayerGroup]:
    groups: list[LayerGroup] = []
    offset = 0
    for i, n in enumerate(sizes):
        if groups and groups[-1].numel == n:
            g = groups[-1]
            groups[-1] = LayerGroup(g.first, g.count + 1, g.offset, n)
        else:
            groups.append(LayerGroup(i, 1, offset, n))
        offset += n * members
    return groups


class FlatParameters:
    """A solo model's parameters as views of one flat tensor: all weights first (layer-major),
    then all biases; gradients likewise, so zeroing is one op and autograd accumulates in place.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        params = [lin.weight for lin in linears] + [lin.bias for lin in linears]
        total = sum(p.numel() for p in params)
        first = params[0]
        self.data = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.data)
        offset = 0
        for p in params:
            n = p.numel()
            self.data[offset : offset + n].copy_(p.detach().reshape(-1))
            p.data = self.data[offset : offset + n].view_as(p)
            p.grad = self.grad[offset : offset + n].view_as(p)
            offset += n
        self.weight_sizes = [lin.weight.numel() for lin in linears]
        self.n_weights = sum(self.weight_sizes)
        # Views made once: slicing on every step costs a dispatch.
        self.weights = self.data[: self.n_weights]
        self.weight_grads = self.grad[: self.n_weights]

    def zero_grad(self) -> None:
        self.grad.zero_()


# Per-step gradients are copied into a ring of two blocks and reduced a block at a time: a
# step costs one copy, and a block of steps costs the few reductions one step used to.
BLOCK_STEPS = 16
BLOCK_BYTES = 16 << 20  # per block; large models get fewer steps per block
# A user's model (shapes given) whose one step's gradient fills a block is kept lean: one ring
# row instead of two blocks, the start-of-epoch weights refilled in place, the epoch's weight
# norms and histogram taken in chunks of CHUNK elements. Resident memory then is 8 bytes per
# weight (the row and the start copy) instead of ~40 (benchmarks/api_memory.py), for the
# same statistics; the price is that a step's copy waits for the previous step's reduction.
LEAN_ABOVE = BLOCK_BYTES // 4
CHUNK = 1 << 16  # elements per chunk of the lean epoch-end passes (256 KiB of float32)
# Rowless (lean, off the CPU or from ROWLESS_CPU_ABOVE weights on it): no ring row at all.
# Each step is reduced in line, chunk by chunk, straight from the gradients, and its histogram
# counts are taken then and kept ([L, _HIST_SPAN] integers) in case it is the epoch's last
# step: 4 bytes per weight (the start copy) instead of 8, the same statistics. On a CPU that is
# work on the training thread the ring row hands to the measuring thread: ~85 ms a step for a
# 27.3M-parameter MLP on one thread of this 2-core CPU, against its bare 110 ms step at batch
# 16 (the ring row's copy: ~20 ms). So the CPU keeps the row for models whose row is small in
# bytes, and goes rowless where it would cost 64 MiB or more; watch(low_memory=...) decides
# otherwise (benchmarks/api_memory.py --compare measures both layouts).
ROWLESS_CPU_ABOVE = 16 << 20  # weights
ROWLESS_CHUNK = {"cpu": 1 << 18}  # per device type; elsewhere 1 << 22: few kernel launches
# Device types whose step counts use bincount: it sizes its result from the data's max, a host
# sync elsewhere, where the counts are added by index_add_ of ones (a stride-0 view of one).
ROWLESS_BINCOUNT = {"cpu"}
# The chunks' intermediates go to scratch buffers made once per pass kind (a few MiB), not
# to a new tensor per chunk: hundreds of 256-512 KiB allocations per epoch end otherwise land
# in glibc's arenas (above its dynamic mmap threshold) and stay resident.


@dataclass
class _Sums:
    """One epoch's per-layer, per-member running sums ([L, K] each)."""

    # Views of one [4, L, K] table, so a block adds all four with one op.
    table: Tensor
    max: Tensor  # max over steps and elements of |g|
    # The moment of divergence, kept on the device so no step waits for a host copy:
    bad_step: Tensor  # [K] 1-based step of the first non-finite gradient entry, 0 if none yet
    first_max: Tensor  # max |g| at the epoch's first step
    finite_max: Tensor  # max |g| over the steps before the first non-finite one
    finite_norm: Tensor  # the L2 norm at the last of those steps (NaN when there is none)
    done: int = 0  # steps already folded in (blocks are reduced in order)
    # True while every step so far is finite for every member, on a CPU only (where checking
    # it costs no device sync; elsewhere it starts False). While it holds, finite_max is `max`
    # and finite_norm the last step's norms, so blocks skip the divergence bookkeeping;
    # `last_norms` keeps what the first bad block needs.
    clean: bool = False
    last_norms: Tensor | None = None

    @property
    def norm(self) -> Tensor:  # sum over steps of the layer's L2 norm
        return self.table[0]

    @property
    def sq(self) -> Tensor:  # sum over steps and elements of g^2
        return self.table[1]

    @property
    def sum(self) -> Tensor:  # ... of g
        return self.table[2]

    @property
    def abs(self) -> Tensor:  # ... of |g|
        return self.table[3]


GradStatsFn = Callable[[Tensor], dict[str, Tensor]]


class EpochGradStats:
    """Accumulates per-step gradient statistics of K members' layers over one epoch.

    `step()` only copies the gradient into a ring block; full blocks are reduced on `executor`
    (the measuring thread, so the training thread goes on at once) or in line without one.
    With an executor, blocks and the epoch's closing function run on it in submission order.
    Rowless (see ROWLESS_CHUNK), `step()` reduces in line and there is no ring.
    """

    ROWLESS = True  # a subclass whose blocks take collectives keeps them off the training thread

    def __init__(
        self,
        weight_sizes: list[int],
        members: int,
        device: torch.device,
        executor: Executor | None = None,
        shapes: Sequence[Sequence[int]] | None = None,
        lean: bool | None = None,
        low_memory: bool | None = None,
    ) -> None:
        self.sizes = weight_sizes
        self.members = members
        self.groups = group_layers(weight_sizes, members)
        self.device = device
        total = sum(weight_sizes) * members
        # Lean (see LEAN_ABOVE): a user's model only (members == 1, shapes given).
        # low_memory: True asks for the rowless layout at any size and on any device, False
        # keeps a ring row, None (the default) goes rowless off the CPU, and on it from
        # ROWLESS_CPU_ABOVE weights (see there).
        self.lean = (total >= LEAN_ABOVE or bool(low_memory)) if lean is None else lean
        self.lean = self.lean and shapes is not None and members == 1
        on_cpu = torch.device(device).type == "cpu"
        wanted = (not on_cpu or total >= ROWLESS_CPU_ABOVE) if low_memory is None else low_memory
        self.rowless = self.lean and self.ROWLESS and wanted
        self._last_counts: Tensor | None = None  # rowless: the last step's [L, _HIST_SPAN] counts
        self.block = 1 if self.lean else max(1, min(BLOCK_STEPS, BLOCK_BYTES // (4 * total)))
        self._n_blocks = 0 if self.rowless else 1 if self.lean else 2
        # Zeros, not empty: the pages are touched here, at set-up, not by the first epoch's
        # steps (filling a new 2 x 5 MB ring took 3.8 ms on this VM, a touched one 1.0-1.6 ms).
        self._ring = [torch.zeros(self.block, total, device=device) for _ in range(self._n_blocks)]
        self._slots = [list(block.unbind(0)) for block in self._ring]
        # Each full block's per-group views, made once: slicing costs an op call per group.
        self._block_views = [self._views(block) for block in self._ring]
        # With the weights' shapes (a user's model, members == 1): each ring row as one view
        # per weight, made once, so a step is one _foreach_copy_ of the gradients as they are
        # (no reshape list, no cat: ~15 us instead of ~30 us for 20 weights on this CPU).
        self._weight_slots: list[list[list[Tensor]]] | None = None
        if shapes is not None:
            starts = np.cumsum([0, *weight_sizes[:-1]]).tolist()
            places = list(zip(starts, weight_sizes, shapes, strict=True))
            self._weight_slots = [
                [[row[a : a + n].view(shape) for a, n, shape in places] for row in rows]
                for rows in self._slots
            ]
        # The last job reading each ring block; a block is refilled only once it has run.
        self._busy: list[Future[object] | None] = [None] * self._n_blocks
        self._half = 0
        self._fill = 0
        self._executor = executor
        # Called with each reduced block's per-step norms [n, L, K] and the steps of the epoch
        # before it, on the thread that reduces it (the live spike check: no extra pass).
        self.on_block: Callable[[Tensor, int], None] | None = None
        self._sums: _Sums | None = None
        self._steps = 0  # a Python count: no tensor op per step
        self._start_weights: Tensor | None = None
        self._reducing: list[Future[object]] = []  # this epoch's block reductions
        # For the once-per-epoch histogram: each element's (layer, member) slot, as the first of
        # its _HIST_SPAN counts (int32, as the columns are).
        n_layers = len(weight_sizes)
        # Each layer's first element (lean: the histogram adds its layer's slot per chunk, so
        # no per-element index is kept: it would cost 4-8 bytes per weight).
        self._starts = np.cumsum([0, *weight_sizes]).tolist()
        self._hist_base = torch.empty(0, device=device)
        self._scratch: dict[str, Tensor] = {}  # lean: per pass kind, see _buffer
        if self.lean:
            sizes = torch.tensor(weight_sizes, dtype=torch.float32, device=device)
            self._numels = sizes.view(-1, 1)
            return
        slot = torch.cat(
            [
                torch.arange(n_layers * members, device=device)[
                    i * members : (i + 1) * members
                ].repeat_interleave(n)
                for i, n in enumerate(weight_sizes)
            ]
        )
        self._hist_base = (slot * _HIST_SPAN).int()
        # Each layer's weight count, [L, 1], for the per-entry means.
        self._numels = torch.tensor(weight_sizes, dtype=torch.float32, device=device).view(-1, 1)

    def _views(self, flat: Tensor) -> list[Tensor]:
        """[..., total] as one [..., count, K, n] view per group of same-size layers."""
        lead = flat.shape[:-1]
        return [
            flat[..., g.offset : g.offset + g.count * self.members * g.numel].view(
                *lead, g.count, self.members, g.numel
            )
            for g in self.groups
        ]

    @property
    def steps(self) -> int:
        """Steps taken in the epoch so far."""
        return self._steps

    def _buffer(self, kind: str, dtype: torch.dtype) -> Tensor:
        """A CHUNK-long scratch tensor for one kind of lean pass, made once. Each kind is used
        by one thread only ("close": the training thread; the histogram's: the one that
        finishes epochs, one epoch at a time)."""
        buf = self._scratch.get(kind)
        if buf is None or buf.numel() != CHUNK:
            buf = self._scratch[kind] = torch.empty(CHUNK, dtype=dtype, device=self.device)
        return buf

    def begin_params(self, weights: Sequence[Tensor]) -> None:
        """Lean: start an epoch from these weights (one per layer), copied into the start
        buffer in place (made once), so no flat copy of the model is made."""
        if self._start_weights is None:
            self._start_weights = torch.empty(sum(self.sizes), device=self.device)
        for (a, b), w in zip(itertools.pairwise(self._starts), weights, strict=True):
            self._start_weights[a:b].copy_(w.reshape(-1))
        self.begin(None)

    @torch.no_grad()
    def close_params(self, weights: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Lean: the epoch's weight norms and update norms ([L, 1] each) from the weights now
        (one per layer), taken in chunks, and the start buffer refilled with these weights
        for the next epoch. On the calling (training) thread: the weights keep changing."""
        assert self._start_weights is not None, "begin_params() not called"
        norms, moved = [], []
        for (a, b), w in zip(itertools.pairwise(self._starts), weights, strict=True):
            flat, start = w.reshape(-1), self._start_weights[a:b]
            sq_w = torch.zeros((), device=self.device)
            sq_d = torch.zeros((), device=self.device)
            for i in range(0, b - a, CHUNK):
                part, was = flat[i : i + CHUNK], start[i : i + CHUNK]
                if part.dtype != torch.float32:  # fp16/bf16 weights: as float32, copied first
                    part = self._buffer("close", torch.float32)[: part.numel()].copy_(part)
                sq_w += torch.linalg.vector_norm(part).square()
                # The update is folded into the start buffer itself (w - start, in place),
                # its norm taken, then the start buffer refilled with the weights now.
                sq_d += torch.linalg.vector_norm(was.neg_().add_(part)).square()
                was.copy_(part)
            norms.append(sq_w.sqrt())
            moved.append(sq_d.sqrt())
        return torch.stack(norms).view(-1, 1), torch.stack(moved).view(-1, 1)

    def begin(self, weights: Tensor | None) -> None:
        """Start an epoch: fresh sums and the weights as they are (for update ratios); None
        (lean) keeps the start buffer as begin_params/close_params left it."""
        shape = (len(self.sizes), self.members)
        zeros = {"dtype": torch.float32, "device": self.device}
        self._sums = _Sums(
            table=torch.zeros(4, *shape, **zeros),
            max=torch.zeros(shape, **zeros),
            bad_step=torch.zeros(self.members, **zeros),
            first_max=torch.zeros(shape, **zeros),
            finite_max=torch.zeros(shape, **zeros),
            finite_norm=torch.full(shape, math.nan, **zeros),
            clean=torch.device(self.device).type == "cpu",
        )
        self._steps = 0
        if weights is not None:
            self._start_weights = weights.detach().clone()
        self._reducing = []

    def step(self, grads: Tensor | Sequence[Tensor]) -> None:
        """Take one step's weight gradients (flat, layer-major): one copy. A sequence of flat
        tensors (a user's model, whose gradients are separate tensors) is concatenated
        straight into the ring: still one op, and fp16/bf16 are upcast to float32 on the way.
        Given `shapes`, the sequence holds each weight's gradient in its own shape instead."""
        if self.rowless:
            assert not isinstance(grads, Tensor), "rowless: a user's model's gradients"
            self._step_rowless(grads)
            return
        if self._fill == 0:
            self._claim(self._half)
        if isinstance(grads, Tensor):
            self._slots[self._half][self._fill].copy_(grads)
        elif self._weight_slots is not None:  # each gradient in its weight's shape
            slots = self._weight_slots[self._half][self._fill]
            if any(g is None for g in grads):  # a weight without a gradient counts as zeros
                for slot, g in zip(slots, grads, strict=True):
                    slot.zero_() if g is None else slot.copy_(g)
            else:
                torch._foreach_copy_(slots, list(grads))
        else:
            torch.cat(list(grads), out=self._slots[self._half][self._fill])
        self._fill += 1
        self._steps += 1
        if self._fill == self.block:
            sums, steps = self._sums, self._ring[self._half]
            views = self._block_views[self._half]
            job = self._run(lambda: self._reduce(sums, steps, views))
            if job is not None:
                self._reducing.append(job)
            self._busy[self._half] = job
            self._half = (self._half + 1) % self._n_blocks
            self._fill = 0

    def finish_later(self) -> GradStatsFn:
        """End the epoch. The returned function, given the weights at the epoch's end, gives
        the statistics (see `finish`). With an executor, call it on the executor's thread, or
        on any thread once nothing else is submitted there (it waits for the epoch's blocks)."""
        assert self._sums is not None and self._start_weights is not None, "begin() not called"
        assert self._steps, "an epoch without steps has no gradient statistics"
        sums, steps, start = self._sums, self._steps, self._start_weights
        if self.rowless:  # every step is reduced already; the last one's counts are kept
            counts, checks = self._last_counts, self._reducing
            assert counts is not None

            def finish_rowless(weights: Tensor) -> dict[str, Tensor]:
                for job in checks:  # the steps' on_block calls: done on the executor's thread
                    job.result()
                return self._statistics(sums, steps, counts, weights, start)

            return finish_rowless
        reducing = self._reducing
        half, fill = self._half, self._fill
        rest = self._ring[half][:fill] if fill else None
        last_half = half if fill else (half - 1) % self._n_blocks
        last = self._slots[last_half][(fill or self.block) - 1]
        done: Future[object] = Future()

        def finish(weights: Tensor) -> dict[str, Tensor]:
            try:
                for job in reducing:  # done already when called on the executor's thread
                    job.result()
                if rest is not None:
                    self._reduce(sums, rest)
                return self._statistics(sums, steps, last, weights, start)
            finally:
                done.set_result(None)

        # Blocks still read by finish() stay untouched until it has run.
        self._busy[last_half] = done
        if fill:
            self._half = (self._half + 1) % self._n_blocks
            self._fill = 0
        return finish

    def finish(self, weights: Tensor) -> dict[str, Tensor]:
        """Per-layer, per-member statistics as [L, K] tensors, plus "grad_hist" [L, K, slots].

        The histogram is of the epoch's last step's gradient (a snapshot; binning every step
        would cost more than the step itself). Without an executor only.
        """
        assert self._executor is None, "with an executor, use finish_later() on its thread"
        return self.finish_later()(weights)

    def _run(self, job: Callable[[], object]) -> Future[object] | None:
        if self._executor is None:
            job()
            return None
        return self._executor.submit(job)

    def _claim(self, half: int) -> None:
        busy = self._busy[half]
        if busy is not None:
            self._busy[half] = None
            busy.result()  # re-raises the reducer's error on the training thread

    def _reduce(self, sums: _Sums, steps: Tensor, views: list[Tensor] | None = None) -> None:
        """Fold a [n, total] block of steps into the sums: one whole-block reduction per
        statistic and group of same-size layers, then a few ops on the small per-step [n, L, K]
        results. Few op calls matter as well as few passes: on the measuring thread each one
        takes the GIL from the training thread (~25 calls per block, 57 us of fixed cost, down
        from ~100 and 170 us for the 20-layer MLP). Takes |g| in place: the block is not read
        again except for the epoch's last step's histogram, which bins |g| (a separate |g|
        buffer cost a cold write of the whole block: ~30% of the reduction). `views` are the
        block's per-group views when made already."""
        views = self._views(steps) if views is None else views
        norms = _cat([torch.linalg.vector_norm(v, dim=3) for v in views])  # [n, L, K]
        signed = _cat([v.sum(dim=3) for v in views])
        steps.abs_()  # the views now hold |g|
        magnitudes = _cat([v.sum(dim=3) for v in views])
        maxes = _cat([v.amax(dim=3) for v in views])  # NaN propagates
        norms, signed, magnitudes, maxes = self._combine(norms, signed, magnitudes, maxes)
        done = sums.done
        self._track_divergence(sums, norms, maxes)
        if self.on_block is not None:
            self.on_block(norms, done)
        sums.table += torch.stack((norms, norms.square(), signed, magnitudes)).sum(dim=1)
        torch.maximum(sums.max, maxes.amax(dim=0), out=sums.max)

    @torch.no_grad()
    def _step_rowless(self, grads: Sequence[Tensor | None]) -> None:
        """One step reduced in line from the gradients themselves (before the optimizer step
        reads them), a chunk at a time through two scratch buffers: per layer the norm, the sums
        of g and of |g|, the max |g| and the histogram's counts, the same per-step results a
        ring row gives _reduce (sums within float32 rounding: chunk by chunk; counts and
        maxes exactly). Costs ~20 op calls per chunk, no allocation the size of a weight."""
        device = self.device
        chunk = ROWLESS_CHUNK.get(torch.device(device).type, 1 << 22)
        n_layers = len(self.sizes)
        parts = torch.zeros(4, n_layers, device=device)  # norm, sum, sum |g|, max |g|
        counts = torch.zeros(n_layers, _HIST_SPAN, dtype=torch.long, device=device)
        by_bincount = torch.device(device).type in ROWLESS_BINCOUNT
        one = torch.ones(1, dtype=torch.long, device=device)
        magnitude = self._rowless_buffer("step", torch.float32, chunk)
        bits_buffer = self._rowless_buffer("bits", torch.int32, chunk)
        cell, edge = (self._rowless_buffer(k, torch.int32, chunk) for k in ("cell", "edge"))
        for layer, g in enumerate(grads):
            if g is None:  # no gradient this step: zeros (their own histogram slot)
                counts[layer, 0] = self.sizes[layer]
                continue
            flat = _memory_order(g.detach())
            norm, total, absolute, top = parts[:, layer].unbind(0)
            # The layer's norm is the norm of its chunks' norms (one vector_norm of the whole
            # layer in the ring layouts; float32 squares overflow to inf alike in both).
            chunk_norms = torch.empty(-(-flat.numel() // chunk), device=device)
            for j, i in enumerate(range(0, flat.numel(), chunk)):
                part = flat[i : i + chunk]
                n = part.numel()
                if part.dtype != torch.float32:  # fp16/bf16: as float32, as the ring holds it
                    part = magnitude[:n].copy_(part)
                torch.linalg.vector_norm(part, out=chunk_norms[j])
                total += part.sum()
                bits = _magnitude_bits(part, out=bits_buffer[:n])
                mag = bits.view(torch.float32)  # |g|
                absolute += mag.sum()
                torch.maximum(top, mag.amax(), out=top)  # NaN propagates
                col = _columns(bits, cell[:n], edge[:n])
                if by_bincount:
                    counts[layer] += torch.bincount(col, minlength=_HIST_SPAN)
                else:
                    counts[layer].index_add_(0, col, one.expand(n))
            norm.copy_(torch.linalg.vector_norm(chunk_norms))
        # The ring's per-step [n, L, K] shape (n = K = 1), then what _reduce does with a block.
        norms, signed, magnitudes, maxes = (t.view(1, n_layers, 1) for t in parts.unbind(0))
        norms, signed, magnitudes, maxes = self._combine(norms, signed, magnitudes, maxes)
        sums = self._sums
        assert sums is not None, "begin() not called"
        done = sums.done
        self._track_divergence(sums, norms, maxes)
        on_block = self.on_block
        if on_block is not None:  # it copies the norms to the host: off the training thread
            job = self._run(lambda: on_block(norms, done))
            if job is not None:
                self._reducing.append(job)
        sums.table += torch.stack((norms, norms.square(), signed, magnitudes)).sum(dim=1)
        torch.maximum(sums.max, maxes.amax(dim=0), out=sums.max)
        self._last_counts = counts
        self._steps += 1

    def _rowless_buffer(self, kind: str, dtype: torch.dtype, size: int) -> Tensor:
        """A `size`-long scratch tensor for the rowless step (training thread only)."""
        buf = self._scratch.get(kind)
        if buf is None or buf.numel() != size:
            buf = self._scratch[kind] = torch.empty(size, dtype=dtype, device=self.device)
        return buf

    def _combine(
        self, norms: Tensor, signed: Tensor, magnitudes: Tensor, maxes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A block's per-step [n, L, K] results as the whole model's: here they are (a
        sharded model's ranks combine theirs: gradscope.api.sharded.ShardedGradStats)."""
        return norms, signed, magnitudes, maxes

    @staticmethod
    def _track_divergence(sums: _Sums, norms: Tensor, maxes: Tensor) -> None:
        """Fold a block's per-step [n, L, K] norms and max |g| into the moment of divergence,
        before the block's max is folded into `sums.max`. On a CPU a finite block of a clean
        epoch costs one check; otherwise a handful of small ops per block, no host copy."""
        n = maxes.shape[0]
        if sums.done == 0:
            sums.first_max.copy_(maxes[0])
        if sums.clean:
            if bool(torch.isfinite(maxes).all()):
                sums.last_norms = norms[-1]
                sums.done += n
                return
            # The first non-finite block: what the skipped bookkeeping would hold by now.
            sums.clean = False
            sums.finite_max.copy_(sums.max)
            if sums.last_norms is not None:
                sums.finite_norm.copy_(sums.last_norms)
        finite = torch.isfinite(maxes).all(dim=1)  # [n, K]: every entry of every layer finite
        # Steps before the member's first non-finite one (in this block and all before it).
        before = finite.int().cumprod(dim=0).bool() & (sums.bad_step == 0)
        masked = torch.where(before.unsqueeze(1), maxes, torch.zeros((), device=maxes.device))
        torch.maximum(sums.finite_max, masked.amax(dim=0), out=sums.finite_max)
        kept = before.sum(dim=0)  # [K]: how many of the block's steps came before it
        last = (kept - 1).clamp(min=0).view(1, 1, -1).expand(1, *norms.shape[1:])
        sums.finite_norm.copy_(torch.where(kept > 0, norms.gather(0, last)[0], sums.finite_norm))
        first_bad = (sums.done + kept + 1).float()
        sums.bad_step.copy_(
            torch.where((sums.bad_step == 0) & (kept < n), first_bad, sums.bad_step)
        )
        sums.done += n

    def _statistics(
        self,
        sums: _Sums,
        steps: int,
        last: Tensor,
        weights: Tensor | tuple[Tensor, Tensor],
        start: Tensor,
    ) -> dict[str, Tensor]:
        n = self._numels * steps
        mean = sums.sum / n
        variance = (sums.sq / n - mean * mean).clamp(min=0)
        if isinstance(weights, tuple):  # lean: the norms, taken by close_params
            weight_norm, moved = weights
        else:
            weight_norm = torch.cat(
                [torch.linalg.vector_norm(v, dim=2) for v in self._views(weights)]
            )
            moved = torch.cat(
                [torch.linalg.vector_norm(v, dim=2) for v in self._views(weights - start)]
            )
        return {
            "grad_norm": sums.norm / steps,
            "grad_mean_abs": sums.abs / n,
            "grad_std": variance.sqrt(),
            "grad_max_abs": sums.max,
            "weight_norm": weight_norm,
            "update_ratio": moved / weight_norm,
            "grad_hist": self._histogram(last),
            # Per member, repeated per layer so every value here is [L, K]; epoch_rows moves
            # it to the epoch and keeps the finite_* values only for an epoch that has one.
            "first_nonfinite_step": sums.bad_step.expand(len(self.sizes), -1),
            "finite_first_max_abs": sums.first_max,
            "finite_max_abs": sums.max if sums.clean else sums.finite_max,
            "finite_last_norm": (
                sums.last_norms if sums.clean and sums.last_norms is not None else sums.finite_norm
            ),
        }

    def _histogram(self, grads: Tensor) -> Tensor:
        """Counts per (layer, member) of log10|g| in HIST_BINS bins, then exact zeros, then
        non-finite values; out-of-range magnitudes go in the edge bins. Every float32 magnitude
        has a column among _HIST_SPAN counts (see _edge_tables), so the bins are one bincount
        and a reorder of the small count table, with no per-element branch. Lean: the same
        bins, a layer's chunk at a time, with the layer's slot added as one number."""
        slots = len(self.sizes) * self.members
        if self.rowless:  # the last step's counts, taken by _step_rowless
            return self._fold(grads)
        if self.lean:
            wide = torch.zeros(slots, _HIST_SPAN, dtype=torch.long, device=self.device)
            flat = grads.detach().reshape(-1)
            bits, cell, edge = (self._buffer(k, torch.int32) for k in ("bits", "cells", "edges"))
            for layer, (a, b) in enumerate(itertools.pairwise(self._starts)):
                for i in range(a, b, CHUNK):
                    part = flat[i : min(b, i + CHUNK)]
                    n = part.numel()
                    _magnitude_bits(part, out=bits[:n])
                    column = _columns(bits[:n], cell[:n], edge[:n])
                    wide[layer] += torch.bincount(column, minlength=_HIST_SPAN)
            return self._fold(wide)
        index = _bin_columns(grads.detach().contiguous()).add_(self._hist_base)
        wide = torch.bincount(index, minlength=slots * _HIST_SPAN)
        return self._fold(wide.view(slots, _HIST_SPAN))

    def _fold(self, wide: Tensor) -> Tensor:
        """[slots, _HIST_SPAN] counts as [L, K, HIST_SLOTS]: the bins, then exact zeros, then
        non-finite values."""
        return wide[:, _HIST_ORDER].view(len(self.sizes), self.members, HIST_SLOTS)


def activation_stats(acts: list[Tensor], kinds: list[str]) -> dict[str, Tensor]:
    """Per-layer activation health from one pass over the test split.

    `acts[l]` is [K, N, units] (K members, N inputs); `kinds[l]` is "sigmoid" or "relu", or
    "none" (a user's layer followed by neither: both fractions are NaN).
    act_std is the mean over units of each unit's std across inputs: the signal's spread, which
    in a deep sigmoid net shrinks ~7x per layer until the output is constant. Saturation applies
    to sigmoid layers, death (0 for every input) to ReLU layers; the other is NaN. A NaN
    activation is neither saturated nor dead.
    """
    nan = torch.tensor(float("nan"), device=acts[0].device)
    out: dict[str, list[Tensor]] = {
        k: [] for k in ("act_mean", "act_std", "saturated_frac", "dead_frac")
    }
    for a, kind in zip(acts, kinds, strict=True):
        a = a.float()
        out["act_mean"].append(a.mean(dim=(1, 2)))
        # Shifted two-pass std: subtracting each unit's first value first is exact for the
        # nearby values of a contracted layer, so spreads below float32's step at 0.5 are still
        # resolved and a constant unit gives exactly 0 (torch's Welford a.std() gives 3e-8 for
        # 128 equal values); ~10x faster on a CPU than torch's reduction over the middle dim,
        # which cost ~20% of a batched ensemble's epoch at K=16.
        # d is the one scratch tensor of the layer: centred and squared in place, then reused
        # for the saturation test. A new [K, N, units] tensor per op cost more than the ops
        # (sigmoid at K=16, 512 inputs: 2.0 ms a layer against 0.45 ms, the same numbers).
        d = a - a[:, :1]
        d.sub_(d.mean(dim=1, keepdim=True))
        out["act_std"].append(d.square_().mean(dim=1).sqrt_().mean(dim=1))
        if kind == "sigmoid":
            # |a - 0.5| > 0.49 is "below 0.01 or above 0.99"; gt_ leaves 1.0 or 0.0 in d.
            sat = torch.sub(a, 0.5, out=d).abs_().gt_(SATURATED_HIGH - 0.5).mean(dim=(1, 2))
            out["saturated_frac"].append(sat)
            out["dead_frac"].append(nan.expand(a.shape[0]))
        elif kind == "tanh":
            # The same slope as a sigmoid at 0.01/0.99 (tanh' = 4 sigmoid'): |a| > 0.98.
            sat = torch.abs(a, out=d).gt_(2 * SATURATED_HIGH - 1).mean(dim=(1, 2))
            out["saturated_frac"].append(sat)
            out["dead_frac"].append(nan.expand(a.shape[0]))
        elif kind == "none":
            out["saturated_frac"].append(nan.expand(a.shape[0]))
            out["dead_frac"].append(nan.expand(a.shape[0]))
        else:
            # ReLU family and GELU-like: a unit whose output is <= 0 for every input sits where
            # the slope is 0 (ReLU), tiny (leaky ReLU, GELU, SiLU) or fading (ELU). For ReLU,
            # max a <= 0 is "0 for every input"; NaN propagates through amax, so a NaN unit is
            # not dead. Same as (a == 0).all(dim=1) for ReLU, ~25x faster.
            dead = (a.amax(dim=1) <= 0).float().mean(dim=1)
            out["saturated_frac"].append(nan.expand(a.shape[0]))
            out["dead_frac"].append(dead)
    return {k: torch.stack(v) for k, v in out.items()}


# Statistics that are finite for any trainable model: a non-finite one means the run diverged.
# (update_ratio is left out: 0/0 for an all-zero weight is not divergence.)
DIVERGENCE_FIELDS = ("grad_norm", "grad_mean_abs", "grad_std", "grad_max_abs", "weight_norm")


def divergence(
    epoch: int,
    metrics: dict[str, float | None],
    layer_stats: list[dict[str, float | bytes | None]],
) -> str | None:
    """Why an epoch counts as diverged, or None: a non-finite train or test loss, or a
    non-finite gradient or weight statistic. Solo runs, ensemble members and runs recorded with
    the `gradscope` API use this one rule (an API run's losses are optional: None is not
    logged, not diverged)."""
    for key in ("train_loss", "test_loss"):
        value = metrics.get(key)
        if value is not None and not math.isfinite(value):
            return f"{key} became non-finite in epoch {epoch}"
    for layer, stats in enumerate(layer_stats):
        for key in DIVERGENCE_FIELDS:
            value = stats.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                return f"{key} of layer {layer} became non-finite in epoch {epoch}"
    return None


EPOCH_VALUE_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "pred_std")


def epoch_rows(
    names: tuple[str, ...],
    layer_values: Iterable[Sequence[float]],
    layer_hists: Iterable[np.ndarray],
    epoch_values: Sequence[float],
    seconds: float,
) -> tuple[list[dict[str, float | bytes | None]], dict[str, float]]:
    """One epoch's numbers, read back from the device, as the store's rows: a dict per layer
    (the named statistics and the histogram as int32 bytes) and the epoch's metrics
    (EPOCH_VALUE_FIELDS in that order, then seconds). Solo runs and ensemble members share it."""
    stats: list[dict[str, float | bytes | None]] = []
    bad_step = 0.0
    for values, hist in zip(layer_values, layer_hists, strict=True):
        row: dict[str, float | bytes | None] = dict(zip(names, values, strict=True))
        row["grad_hist"] = np.asarray(hist).astype("<i4").tobytes()
        bad_step = float(row.pop("first_nonfinite_step", 0.0) or 0.0)  # type: ignore[arg-type]
        stats.append(row)
    if not bad_step:  # every step finite: nothing to keep about a divergence
        for row in stats:
            for key in DIVERGENCE_LAYER_FIELDS:
                row[key] = None
    metrics: dict[str, float] = dict(zip(EPOCH_VALUE_FIELDS, epoch_values, strict=True))
    metrics["seconds"] = seconds
    if bad_step:
        metrics["first_nonfinite_step"] = int(bad_step)
    return stats, metrics
