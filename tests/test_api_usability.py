"""The API as a PyTorch user meets it: init's line on stderr (and silencing it), repr, several
optimizers, measuring every N-th step, a failed notebook cell, and the lean layout of large
models giving the very statistics of the usual one."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
import gradscope.runner.gradient_stats as gradient_stats
from gradscope.api import notebook
from gradscope.vocab.fields import LAYER_STAT_FIELDS


def stats(db: Path, run_id: str, field: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            f"SELECT epoch, layer, {field} FROM layer_stats WHERE run_id = ? ORDER BY epoch, layer",
            (run_id,),
        ).fetchall()


def status(db: Path, run_id: str) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, error FROM runs WHERE id = ?", (run_id,)).fetchone()


def test_init_prints_the_run_id_and_where_to_look_unless_quiet(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = gradscope.init(db=str(db_path), name="mine")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert run.id in err and str(db_path) in err and f"gradscope show {run.id[:8]}" in err
    assert repr(run) == f"<gradscope.Run id={run.id} name='mine' status=running>"
    run.finish()
    assert repr(run).endswith("status=completed>")
    gradscope.init(db=str(db_path), quiet=True).finish()
    monkeypatch.setenv("GRADSCOPE_QUIET", "1")
    gradscope.init(db=str(db_path)).finish()
    assert capsys.readouterr().err == ""


def test_each_optimizer_measures_the_weights_it_updates(db_path: Path) -> None:
    """Body and head with their own optimizers, the head's stepping every other iteration:
    each layer's gradient norm is the mean over its own optimizer's steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    body = torch.optim.SGD(model[0].parameters(), lr=0.1)
    head = torch.optim.Adam(model[2].parameters(), lr=0.01)
    seen: dict[int, list[float]] = {0: [], 1: []}
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    with gradscope.init(db=str(db_path), quiet=True) as run:
        run.watch(model, body)
        run.watch(model, head)  # a second call adds its optimizer
        body.register_step_pre_hook(lambda *_: seen[0].append(float(model[0].weight.grad.norm())))
        head.register_step_pre_hook(lambda *_: seen[1].append(float(model[2].weight.grad.norm())))
        for i in range(6):
            body.zero_grad()
            head.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            body.step()
            if i % 2 == 0:
                head.step()
        assert run.step == 6  # the optimizers' steps, not their sum
        run.log_epoch()
    got = stats(db_path, run.id, "grad_norm")
    assert len(seen[0]) == 6 and len(seen[1]) == 3
    assert got[0][2] == pytest.approx(np.mean(seen[0]), rel=1e-5)
    assert got[1][2] == pytest.approx(np.mean(seen[1]), rel=1e-5)


def test_every_n_measures_every_nth_step_and_the_whole_epochs_update(db_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    norms: list[float] = []
    maxes: list[float] = []
    start = model[0].weight.detach().clone()
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    with gradscope.init(db=str(db_path), quiet=True) as run:
        run.watch(model, optimizer, every=3)

        def look(*_: object) -> None:  # a pre-hook returning a value would replace the args
            norms.append(float(model[0].weight.grad.norm()))
            maxes.append(float(model[0].weight.grad.abs().max()))

        optimizer.register_step_pre_hook(look)
        for _ in range(7):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        run.log_epoch()
    measured = [0, 3, 6]  # steps 1, 4 and 7
    assert stats(db_path, run.id, "grad_norm")[0][2] == pytest.approx(
        np.mean([norms[i] for i in measured]), rel=1e-5
    )
    assert stats(db_path, run.id, "grad_max_abs")[0][2] == pytest.approx(
        max(maxes[i] for i in measured), rel=1e-6
    )
    # The update ratio is the epoch's: from its start to its end, every step's update included.
    end = model[0].weight.detach()
    assert stats(db_path, run.id, "update_ratio")[0][2] == pytest.approx(
        float((end - start).norm() / end.norm()), rel=1e-5
    )
    with pytest.raises(ValueError, match="every"):
        gradscope.init(db=str(db_path), quiet=True).watch(model, optimizer, every=0)


def test_watching_a_second_model_says_how_to_watch_both(db_path: Path) -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    with gradscope.init(db=str(db_path), quiet=True) as run:
        run.watch(a, torch.optim.SGD(a.parameters(), lr=0.1))
        with pytest.raises(ValueError, match="ModuleDict"):
            run.watch(b, torch.optim.SGD(b.parameters(), lr=0.1))


class _Events:
    def __init__(self) -> None:
        self.callbacks: dict[str, list] = {}

    def register(self, event: str, callback: object) -> None:
        self.callbacks.setdefault(event, []).append(callback)


def test_a_failed_notebook_cell_fails_the_open_runs(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In IPython (here a stand-in shell with IPython's events API), init() registers a
    post_run_cell callback once; a cell whose code raised fails every open run, a cell that
    was interrupted marks it interrupted, a clean cell leaves it running."""
    shell = types.SimpleNamespace(events=_Events())
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setattr(notebook, "_registered", set())
    first = gradscope.init(db=str(db_path), quiet=True)
    second = gradscope.init(db=str(db_path), quiet=True)
    [callback] = shell.events.callbacks["post_run_cell"]  # registered once
    callback(types.SimpleNamespace(error_in_exec=None))
    assert status(db_path, first.id)[0] == "running"
    callback(types.SimpleNamespace(error_in_exec=ZeroDivisionError("division by zero")))
    for run in (first, second):
        assert status(db_path, run.id) == ("failed", "ZeroDivisionError: division by zero")
    third = gradscope.init(db=str(db_path), quiet=True)
    callback(types.SimpleNamespace(error_in_exec=KeyboardInterrupt()))
    assert status(db_path, third.id)[0] == "interrupted"


def test_the_heartbeat_thread_dies_with_the_process(db_path: Path) -> None:
    """A daemon thread: a dead or restarted kernel takes it along (the run then goes stale)."""
    run = gradscope.init(db=str(db_path), quiet=True)
    assert run._heartbeat._thread.daemon
    run.finish()


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_the_lean_layout_gives_the_same_statistics(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Large models keep one ring row and refill the start weights in place, with the epoch's
    weight norms and histogram taken in chunks: forced on a small model (chunks that cross
    layer boundaries too), every statistic equals the usual layout's and the histograms are
    identical; so do the rowless layout's (no ring row: each step reduced in line, as on an
    accelerator), asked for on the CPU through watch(low_memory=True) at any size."""
    monkeypatch.setattr(gradient_stats, "CHUNK", chunk)
    monkeypatch.setitem(gradient_stats.ROWLESS_CHUNK, "cpu", chunk)
    ids = {}
    for layout in ("usual", "lean", "rowless"):
        lean = layout != "usual"
        monkeypatch.setattr(gradient_stats, "LEAN_ABOVE", 0 if layout == "lean" else 1 << 62)
        torch.manual_seed(3)
        model = nn.Sequential(
            nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 9), nn.ReLU(), nn.Linear(9, 2)
        )
        model[2].weight.data[0, :3] = 0.0  # exact zeros have a histogram slot of their own
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        x, y = torch.randn(20, 6), torch.randint(0, 2, (20,))
        with gradscope.init(db=str(db_path), quiet=True) as run:
            run.watch(model, optimizer, low_memory=True if layout == "rowless" else None)
            assert all(g.stats.lean == lean for g in run._watcher.groups)
            assert all(g.stats.rowless == (layout == "rowless") for g in run._watcher.groups)
            for _epoch in range(2):
                for _ in range(5):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    optimizer.step()
                run.log_epoch()
        ids[layout] = run.id
    for layout in ("lean", "rowless"):
        for field in LAYER_STAT_FIELDS:
            usual, other = stats(db_path, ids["usual"], field), stats(db_path, ids[layout], field)
            for a, b in zip(usual, other, strict=True):
                assert a[:2] == b[:2]
                assert (a[2] is None and b[2] is None) or a[2] == pytest.approx(b[2], rel=1e-5)
        assert stats(db_path, ids["usual"], "grad_hist") == stats(db_path, ids[layout], "grad_hist")


TRAINING_PROCESS = """
import sys, torch, gradscope
run = gradscope.init(db=sys.argv[1], quiet=True)
model = torch.nn.Linear(3, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
run.watch(model, optimizer, probe=torch.randn(4, 3))
for _ in range(2):
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    run.log({"lr": 0.1})
    run.log_epoch(train_loss=1.0)
run.finish()
print("pandas" in sys.modules)
"""


@pytest.mark.slow
def test_a_training_process_never_loads_pandas(db_path: Path) -> None:
    """pandas is for readers (dashboard, CLI): a process that trains and records does not pay
    its ~90 MB of resident memory."""
    out = subprocess.run(
        [sys.executable, "-c", TRAINING_PROCESS, str(db_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_low_memory_takes_a_bool_or_none(db_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.init(db=str(db_path), quiet=True) as run:
        with pytest.raises(ValueError, match="low_memory must be True, False or None"):
            run.watch(model, optimizer, low_memory="yes")
        run.watch(model, optimizer, low_memory=False)
        assert not any(g.stats.rowless for g in run._watcher.groups)


@pytest.mark.parametrize(
    ("weights_above", "low_memory", "rowless"),
    [(0, None, True), (1 << 62, None, False), (0, False, False), (1 << 62, True, True)],
)
def test_the_cpu_default_goes_rowless_from_a_size(
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    weights_above: int,
    low_memory: bool | None,
    rowless: bool,
) -> None:
    """By default a CPU model whose ring row would reach ROWLESS_CPU_ABOVE weights keeps no
    row (4 bytes per weight, not 8); below that, the row; low_memory says otherwise."""
    monkeypatch.setattr(gradient_stats, "LEAN_ABOVE", 0)
    monkeypatch.setattr(gradient_stats, "ROWLESS_CPU_ABOVE", weights_above)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.init(db=str(db_path), quiet=True) as run:
        run.watch(model, optimizer, low_memory=low_memory)
        assert all(g.stats.lean for g in run._watcher.groups)
        assert all(g.stats.rowless == rowless for g in run._watcher.groups)
