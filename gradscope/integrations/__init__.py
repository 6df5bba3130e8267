"""Where users train: callbacks that record a gradscope run from a trainer's own hooks.

`gradscope.integrations.lightning.GradscopeCallback` (PyTorch Lightning, extra
`gradscope[lightning]`) and `gradscope.integrations.transformers.GradscopeCallback` (the Hugging
Face Trainer, extra `gradscope[transformers]`). Each uses only the public API (`gradscope.init`,
`run.watch`, `run.log`, `run.log_epoch`, finishing with the trainer's outcome); importing this
package imports neither library.
"""

from __future__ import annotations

from typing import Any


class CallbackSettings:
    """What both callbacks take: gradscope.init's `db`, `name`, `config` and `quiet`, and
    run.watch's `every` (measure every N-th optimizer step) and `probe` (an input batch for
    activation health). The run itself is made when training starts."""

    def __init__(
        self,
        db: str | None = None,
        name: str | None = None,
        every: int = 1,
        *,
        config: dict[str, Any] | None = None,
        probe: Any = None,
        quiet: bool | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.db, self.name, self.every = db, name, every
        self.config, self.probe, self.quiet = config, probe, quiet
        self.run: Any = None  # gradscope.Run (rank 0) or SilentRun, once training starts
