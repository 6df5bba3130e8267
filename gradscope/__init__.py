"""gradscope: see the vanishing-gradient problem happen, measure it, and compare the cures.

The Python API records any PyTorch training loop into a gradscope database:

    import gradscope
    run = gradscope.init(db="runs.db", name="my-cnn", config={"lr": 0.01})
    run.watch(model, optimizer)   # every optimizer step is measured
    for epoch in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(); loss_fn(model(xb), yb).backward(); optimizer.step()
            run.log({"lr": lr})       # any named scalars, per step (optional)
        run.log_epoch(train_loss=..., test_acc=...)  # all optional
    run.finish()                  # or: with gradscope.init(...) as run:

The rest of the project lives in subpackages, bottom to top: `gradscope.vocab` (words and
lists), `gradscope.db` (storage), `gradscope.analysis` (diagnosis), `gradscope.runner`
(training and workers), `gradscope.api`, `gradscope.cli` and `gradscope.dashboard`.

Importing this package imports nothing else: `init` and `Run` load the API on first use (so
the dashboard's `gradscope.dashboard` never pulls in the API), and torch is loaded by `watch()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradscope.api.run import Run, init
    from gradscope.api.through_time import time_gradients

__all__ = ["Run", "init", "time_gradients"]
_SUBPACKAGES = ["analysis", "api", "cli", "dashboard", "db", "runner", "vocab"]


def __dir__() -> list[str]:
    """The API, the version and the subpackages (for tab completion), not typing's names."""
    return sorted([*__all__, "__version__", *_SUBPACKAGES])


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, as pip shows it
        from importlib.metadata import version

        return version("gradscope")
    if name == "time_gradients":  # the gradient reaching each time step (loads torch)
        from gradscope.api.through_time import time_gradients

        return time_gradients
    if name in __all__:
        from gradscope.api import run

        return getattr(run, name)
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
