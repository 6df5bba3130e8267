"""One run per training job, not per process: under DDP, rank 0 owns the run.

After DDP's all-reduce every rank holds the same averaged gradient (measured on 2 CPU processes
with gloo: equal to one process's gradient on the concatenated batch within ~1e-7; the test
tests/test_integrations_ddp.py checks it each run), so the other ranks have nothing to add:
`gradscope.init()` hands them a SilentRun that measures nothing, writes nothing and costs
nothing. The owner's config keeps the job's shape ("distributed": rank, world size, backend).

Sharded training with FSDP2's fully_shard: each rank holds a slice of every gradient, so every
rank measures its slice and the ranks combine their partial sums once per block of steps
(gradscope.api.sharded); rank 0 records, the others' SilentRun measures and sends. The first
FSDP (FullyShardedDataParallel, flat parameters) is refused by watch() with a clear error:
statistics taken from one rank's flat slice would be wrong.

Torch-free until asked: the rank is read from torch.distributed only when the process has
imported it (a process group needs it), else from torchrun's RANK / WORLD_SIZE.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

FSDP_REFUSED = (
    "FSDP is not supported yet for FullyShardedDataParallel (FSDP1): its flat parameters are "
    "sharded across ranks (each rank holds a slice), and statistics of one slice would be "
    "wrong; shard the model with FSDP2's torch.distributed.fsdp.fully_shard (supported), or "
    "record a DDP or single-process run of the model"
)


def job_rank() -> tuple[int, int, str | None]:
    """(rank, world size, backend) of this process in its training job; (0, 1, None) alone."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), str(dist.get_backend())
    try:  # torchrun sets these before the script calls init_process_group
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1, None
    return (rank, world, None) if world > 1 else (0, 1, None)


def job_config(rank: int, world: int, backend: str | None) -> dict[str, Any]:
    """What the run's config keeps of the job (only for a job of several processes)."""
    found: dict[str, Any] = {"rank": rank, "world_size": world, "recorded_by": "rank 0"}
    if backend:
        found["backend"] = backend
    return found


def refuse_sharded(model: Any) -> None:
    """Raise NotImplementedError for a model trained with the first FSDP (a
    FullyShardedDataParallel wrapper, flat parameters): a clear refusal rather than statistics
    of one rank's shard. FSDP2 (fully_shard, DTensor parameters) is measured instead."""
    from torch import nn

    if not isinstance(model, nn.Module):
        return
    for module in model.modules():
        if "FullyShardedDataParallel" in {c.__name__ for c in type(module).__mro__}:
            raise NotImplementedError(FSDP_REFUSED)
        for param in module.parameters(recurse=False):
            if type(param).__name__ == "FlatParameter":
                raise NotImplementedError(FSDP_REFUSED)


def sharded_weights(params: list[Any]) -> bool:
    """Whether any of these weights is a DTensor (FSDP2's fully_shard): then each rank holds
    a shard and the statistics are combined across ranks (gradscope.api.sharded)."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and any(isinstance(p, dtensor) for p in params)


def kind_of(module: Any) -> str:
    """A module's class name; for a fully_shard'ed module, its own class, not FSDP2's
    FSDP<class> made for it (whose bases are FSDPModule and the module's class)."""
    mro = type(module).__mro__
    if len(mro) > 2 and mro[1].__name__ == "FSDPModule":
        return mro[2].__name__
    return mro[0].__name__


class SilentRun:
    """The run on a rank other than 0 of a DDP job: the same calls as gradscope.Run, none of
    which measures or writes (rank 0 records the job's one run). `id` is None here. Under FSDP2
    it measures its shards and takes part in rank 0's collectives (a Follower), writing
    nothing."""

    def __init__(self, rank: int, world_size: int, name: str | None) -> None:
        self.id: str | None = None
        self.name = name
        self.rank = rank
        self.world_size = world_size
        self._status: str | None = None
        self._steps = 0
        self._follower: Any = None  # gradscope.api.sharded.Follower, under FSDP2

    def watch(
        self,
        model: Any,
        optimizer: Any,
        probe: Any = None,
        on_warning: Any = None,
        *,
        every: int = 1,
        time_dim: int | None = None,  # rank 0 measures through time; the others do not
        loss_fn: Any = None,
    ) -> SilentRun:
        """Checks the model as rank 0's watch() does (FSDP1 is refused on every rank); a
        FSDP2 model is measured here too: its statistics need every rank's shard."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        refuse_sharded(model)
        from gradscope.api.watch import find_layers

        if sharded_weights([layer.param for layer in find_layers(model)]):
            from gradscope.api.sharded import Follower

            self._follower = Follower(model, optimizer, probe, every, self._follower)
        return self

    @property
    def step(self) -> int:
        return self._follower.watcher.total_steps if self._follower is not None else 0

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        return None

    def log_epoch(
        self,
        train_loss: Any = None,
        train_acc: Any = None,
        test_loss: Any = None,
        test_acc: Any = None,
        **metrics: Any,
    ) -> None:
        if self._follower is not None:
            self._follower.epoch()

    diverged = False
    cancel_requested = False
    lost = False

    @property
    def warnings(self) -> list[Any]:
        return []

    @property
    def status(self) -> str:
        return self._status or "running"

    def finish(self) -> str:
        self._close()
        self._status = self._status or "completed"
        return self._status

    def _close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.close()

    def __enter__(self) -> SilentRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()
        if exc is None:
            self._status = self._status or "completed"
        else:
            self._status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"

    def __repr__(self) -> str:
        return f"<gradscope.SilentRun rank={self.rank}/{self.world_size} (rank 0 records)>"
