"""FSDP2 (`torch.distributed.fsdp.fully_shard`): every rank measures its shard, rank 0 records.

After backward each rank's `p.grad` is a DTensor holding a slice of the weight's gradient (a
(16, 8) weight gives (8, 8) per rank on 2 ranks). Every statistic gradscope keeps is a sum, a
count or a maximum over a layer's elements, so each rank reduces its own slice exactly as
gradscope.runner.gradient_stats.EpochGradStats does (a ring of steps, reduced a block of 16
steps at a time on the measuring thread) and the ranks then combine the block's small per-step,
per-layer partial results (sum g^2, sum g, sum |g|, max |g|: [4, steps, layers] floats) in ONE
all_gather per block: each rank sums and maxes the gathered table in rank order, so every rank
gets the same numbers, and the per-step norm is sqrt(sum over ranks of sum g^2). At the epoch's
end one all_reduce (float64, exact for counts) adds the ranks' weight sums (|w|^2, |w - w0|^2)
and histogram counts of the last step's gradient; an epoch whose step count is not a multiple
of the block adds one all_gather for its last, partial block.

The collectives run on their own process group (made at watch(), on every rank), on each
rank's single measuring thread, in the same order on every rank (blocks in step order, then
the epoch's close), so they never interleave with FSDP's own collectives on the default group.
Rank 0's Run records the job's one run; the other ranks' SilentRun keeps a Follower: the same
Watcher and the same collectives, no database.

Shards may be uneven (a (3, 16) weight: 2 rows and 1 row; a (1, 3) weight: 1 row and none):
each rank's ring holds every layer at the largest shard's size (the same layout, block size and
collective shapes on every rank); the zeros that pad a smaller shard are taken out of the
histogram's zero count, and the per-element means divide by the global element count.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard

from gradscope.api.watch import EpochPart, Watcher, _DeviceGroup
from gradscope.runner.gradient_stats import EpochGradStats, _Sums
from gradscope.vocab.fields import HIST_BINS

NOT_SHARDED_EVENLY = (
    "gradscope measures FSDP2 (fully_shard) models whose weights are all sharded over one "
    "mesh spanning the whole job (Shard placements on a 1-D mesh); {why}"
)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _check_layout(params: Sequence[nn.Parameter]) -> None:
    """Refuse what the combining would get wrong: a replicated weight (HSDP's 2-D mesh,
    Replicate placements) would be counted once per replica, a plain weight once per rank."""
    world = dist.get_world_size()
    for p in params:
        if not isinstance(p, DTensor):
            raise NotImplementedError(NOT_SHARDED_EVENLY.format(why="a weight is not a DTensor"))
        mesh = p.device_mesh
        if mesh.ndim != 1 or mesh.size() != world:
            raise NotImplementedError(
                NOT_SHARDED_EVENLY.format(why=f"got a mesh of shape {tuple(mesh.shape)}")
            )
        if not all(isinstance(pl, Shard) for pl in p.placements):
            raise NotImplementedError(
                NOT_SHARDED_EVENLY.format(why=f"got placements {p.placements}")
            )


class ShardedGradStats(EpochGradStats):
    """EpochGradStats of one rank's shards, combined with the other ranks' once per block
    (one all_gather) and once per epoch's close (one all_reduce): the statistics of the
    whole weights, on every rank."""

    ROWLESS = False  # a step's combine is a collective: it stays on the measuring thread

    def __init__(
        self,
        padded: list[int],
        local: list[int],
        numels: list[int],
        device: torch.device,
        executor: Executor,
        group: Any,
    ) -> None:
        # Every layer at its largest shard's size: the same ring layout on every rank.
        super().__init__(padded, 1, device, executor, shapes=[(n,) for n in padded])
        self._group = group
        self._world = dist.get_world_size(group)
        # The ring's rows as views of each layer's own shard (the rest stays zero: padding).
        starts = np.cumsum([0, *padded[:-1]]).tolist()
        self._weight_slots = [
            [[row[a : a + n] for a, n in zip(starts, local, strict=True)] for row in rows]
            for rows in self._slots
        ]
        self._pad = torch.tensor([p - n for p, n in zip(padded, local, strict=True)], device=device)
        # Per-element means divide by the whole weight's element count.
        self._numels = torch.tensor(numels, dtype=torch.float32, device=device).view(-1, 1)
        self._global_hist: Tensor | None = None
        self.collectives = 0  # how many this rank took part in (a block's, an epoch's)

    def _combine(
        self, norms: Tensor, signed: Tensor, magnitudes: Tensor, maxes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One all_gather of the block's [4, n, L, K] partial results; sums and maxes taken in
        rank order on every rank (NaN propagates through both)."""
        packed = torch.stack((norms.square(), signed, magnitudes, maxes))
        parts = [torch.empty_like(packed) for _ in range(self._world)]
        dist.all_gather(parts, packed, group=self._group)
        self.collectives += 1
        every = torch.stack(parts)
        total = every[:, :3].sum(dim=0)
        return total[0].sqrt(), total[1], total[2], every[:, 3].amax(dim=0)

    def _statistics(
        self,
        sums: _Sums,
        steps: int,
        last: Tensor,
        weights: Tensor | tuple[Tensor, Tensor],
        start: Tensor,
    ) -> dict[str, Tensor]:
        """The epoch's close: this rank's weight sums and histogram counts, added over the ranks
        by one all_reduce, then the statistics as a single process finishes them."""
        if isinstance(weights, tuple):  # lean: this shard's norms, taken by close_params
            weight_sq, moved_sq = weights[0].square(), weights[1].square()
        else:
            weight_sq = torch.cat(
                [torch.linalg.vector_norm(v, dim=2) for v in self._views(weights)]
            ).square()
            moved_sq = torch.cat(
                [torch.linalg.vector_norm(v, dim=2) for v in self._views(weights - start)]
            ).square()
        hist = super()._histogram(last)  # [L, 1, HIST_SLOTS]
        hist[:, 0, HIST_BINS] -= self._pad  # the padding's zeros are no gradient's
        packed = torch.cat(
            (weight_sq.reshape(-1), moved_sq.reshape(-1), hist.reshape(-1)), dim=0
        ).to(torch.float64)  # counts exact to 2**53
        dist.all_reduce(packed, group=self._group)
        self.collectives += 1
        n = weight_sq.numel()
        weight_norm = packed[:n].view_as(weight_sq).sqrt().to(torch.float32)
        moved = packed[n : 2 * n].view_as(weight_sq).sqrt().to(torch.float32)
        self._global_hist = packed[2 * n :].round().to(torch.long).view_as(hist)
        try:
            return super()._statistics(sums, steps, last, (weight_norm, moved), start)
        finally:
            self._global_hist = None

    def _histogram(self, grads: Tensor) -> Tensor:
        assert self._global_hist is not None, "only the epoch's close asks for the histogram"
        return self._global_hist


class ShardedGroup(_DeviceGroup):
    """_DeviceGroup of a FSDP2 model: its weights' local shards, measured always on the
    measuring thread (never in line: the collectives must keep one order on every rank)."""

    def __init__(
        self,
        indices: list[int],
        params: list[nn.Parameter],
        executor: Executor,
        *,
        padded: dict[int, int],
        group: Any,
    ) -> None:
        self.indices = indices
        self.params = params
        self.device = params[0].device
        self.inline = False
        local = [_local(p).numel() for p in params]
        self._pads = [padded[id(p)] - n for p, n in zip(params, local, strict=True)]
        self.stats = ShardedGradStats(
            [padded[id(p)] for p in params],
            local,
            [p.numel() for p in params],
            self.device,
            executor,
            group,
        )

    def step(self) -> None:
        grads: list[Tensor | None] = []
        for p in self.params:
            g = p.grad
            grads.append(None if g is None else _local(g).reshape(-1))
        self.stats.step(grads)

    def _flat(self) -> list[Tensor]:
        """Each weight's local shard, flat, padded with zeros to the ring's layout."""
        out = []
        for p, pad in zip(self.params, self._pads, strict=True):
            w = _local(p.detach()).reshape(-1).to(torch.float32)
            out.append(torch.cat((w, w.new_zeros(pad))) if pad else w)
        return out

    def weights(self) -> Tensor:
        return torch.cat(self._flat())

    def start_epoch(self) -> None:
        if self.stats.lean:
            self.stats.begin_params(self._flat())
        else:
            self.stats.begin(self.weights())

    def close(self) -> tuple[Callable[[Tensor], dict[str, Tensor]], Any]:
        if self.stats.lean:
            weights = self.stats.close_params(self._flat())
            finish = self.stats.finish_later()
            self.stats.begin(None)
            return finish, weights
        flat = self.weights()
        finish = self.stats.finish_later()
        self.stats.begin(flat)
        return finish, flat

    def settle(self) -> None:
        """Wait for this epoch's block reductions: each is a collective the other ranks wait
        for, so none may be cancelled when the run closes."""
        concurrent.futures.wait(list(self.stats._reducing))


def group_maker(params: Sequence[nn.Parameter]) -> Callable[..., ShardedGroup]:
    """Check the layout, make gradscope's own process group (on every rank: watch() is called
    on every rank) and agree on each weight's ring size (the largest shard's)."""
    _check_layout(params)
    device = params[0].device
    group = dist.new_group(backend=dist.get_backend())
    # The same model on every rank? (Different lists of weights would make the collectives'
    # shapes differ: a hang or garbage, so a clear error instead.)
    shape = torch.tensor([len(params), sum(p.numel() for p in params)], device=device)
    everyone = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, shape, group=group)
    if any(not torch.equal(s, shape) for s in everyone):
        raise ValueError(
            "watch() must be called with the same model on every rank of a FSDP job: "
            f"(weights, elements) per rank {[s.tolist() for s in everyone]}"
        )
    sizes = torch.tensor([_local(p).numel() for p in params], device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    padded = {id(p): max(1, int(n)) for p, n in zip(params, sizes.tolist(), strict=True)}

    def make(indices: list[int], group_params: list[nn.Parameter], executor: Executor):  # noqa: ANN202
        return ShardedGroup(indices, group_params, executor, padded=padded, group=group)

    return make


class Follower:
    """What a rank other than 0 does for a FSDP job's run: the same measuring (its shards)
    and the same collectives as rank 0, on its own measuring thread; nothing recorded."""

    def __init__(
        self, model: nn.Module, optimizer: Any, probe: Any, every: int, old: Follower | None
    ) -> None:
        if old is not None:  # watch() again: as Run.watch, the same model with more optimizers
            optimizers = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
            optimizer = [
                *[o for o in old.watcher.optimizers if all(o is not n for n in optimizers)],
                *optimizers,
            ]
            self.pool = old.pool
            self.jobs = old.jobs
            old.watcher.remove()
        else:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradscope-measure")
            self.jobs: list[Future[None]] = []
        self.watcher = Watcher(model, optimizer, self.pool, probe, None, every=every)

    def epoch(self) -> None:
        """As Run.log_epoch: close the epoch (the probe's forward pass included: a FSDP
        forward is a collective too) and finish its statistics on the measuring thread."""
        part = self.watcher.end_epoch()
        self.jobs.append(self.pool.submit(self._finish, part))

    @staticmethod
    def _finish(part: EpochPart) -> None:
        failure: BaseException | None = None
        for _indices, finish, weights in part.finishers:  # all of them, as rank 0 does
            try:
                finish(weights)
            except BaseException as exc:  # noqa: BLE001 - re-raised once all are released
                failure = failure or exc
        if failure is not None:
            raise failure

    def close(self) -> None:
        try:
            for job in self.jobs:
                job.result()
        finally:
            self.watcher.remove()
            self.pool.shutdown(wait=True)
