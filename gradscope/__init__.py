"""gradscope's Python API: record any PyTorch training loop into a gradscope database.

    import gradscope
    run = gradscope.init(db="runs.db", name="my-cnn", config={"lr": 0.01})
    run.watch(model, optimizer)   # every optimizer step is measured
    for epoch in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(); loss_fn(model(xb), yb).backward(); optimizer.step()
        run.log_epoch(train_loss=..., test_acc=...)  # all optional
    run.finish()                  # or: with gradscope.init(...) as run:

Importing this package does not import torch; `watch()` does.
"""

from gradscope.run import Run, init

__all__ = ["Run", "init"]
