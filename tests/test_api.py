"""The public API (gradscope.init / run.watch) on a user's own model: every recorded statistic
against a direct computation from .grad, the statuses, and a killed process marked lost."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradscope
import gradscope.api.watch as gradscope_watch
from gradscope.db.engine import make_engine
from gradscope.db.lifecycle import WORKER_LOST, db_now, recover_lost
from gradscope.db.share.base import ImportRefused
from gradscope.db.share.export import export_runs
from gradscope.db.share.importing import import_file
from gradscope.db.share.table_files import export_tables
from gradscope.vocab.custom import CustomConfigError
from gradscope.vocab.fields import HIST_BINS, HIST_LOG10_MAX, HIST_LOG10_MIN, LAYER_STAT_FIELDS

ROOT = Path(__file__).resolve().parent.parent


class Custom(nn.Module):
    """Conv, embedding, norm and linear layers, one frozen layer, a functional activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(1, 3, 3)
        self.relu = nn.ReLU()
        self.emb = nn.Embedding(10, 4)
        self.conv1 = nn.Conv1d(4, 5, 3, padding=1)
        self.bn = nn.BatchNorm1d(5)
        self.frozen = nn.Linear(5 + 3, 6)
        self.frozen.requires_grad_(False)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, 1, 6, 6]
        img = self.relu(self.conv2(x)).mean(dim=(2, 3))  # [N, 3]
        tokens = (x[:, 0, 0, :].abs() * 3).long().clamp(0, 9)  # [N, 6]
        seq = torch.sigmoid(self.bn(self.conv1(self.emb(tokens).transpose(1, 2)))).mean(dim=2)
        return self.head(self.norm(self.frozen(torch.cat([img, seq], dim=1))))


LAYERS = ["conv2", "emb", "conv1", "bn", "norm", "head"]  # module order; frozen is skipped
STEPS = 18  # optimizer steps per epoch


def rows(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def run_row(db: Path, run_id: str) -> dict:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())


def log_histogram(magnitudes: np.ndarray) -> np.ndarray:
    """Counts of log10 of the non-zero magnitudes over the shared bins, in float64."""
    logs = np.log10(magnitudes[magnitudes > 0].astype(np.float64))
    edges = np.linspace(HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS + 1)
    counts, _ = np.histogram(np.clip(logs, HIST_LOG10_MIN, HIST_LOG10_MAX - 1e-9), bins=edges)
    return counts


@pytest.mark.parametrize("reduce", ["in line", "on the measuring thread"])
def test_every_statistic_matches_a_direct_computation_from_grad(
    db_path: Path, reduce: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs of Adam steps, each step accumulating two micro-batches: the stored
    statistics equal ones computed here from each step's .grad (float32 tolerance), whether
    blocks of steps are reduced in line (small models) or on the measuring thread."""
    monkeypatch.setattr(gradscope_watch, "INLINE_BELOW", 10**9 if reduce == "in line" else 0)
    torch.manual_seed(0)
    model = Custom()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(8 * STEPS, 1, 6, 6), torch.randint(0, 3, (8 * STEPS,))
    weights = [model.get_submodule(name).weight for name in LAYERS]
    seen: list[list[torch.Tensor]] = []  # per step, each layer's gradient as the step uses it
    snapshots = [[w.detach().clone() for w in weights]]
    with gradscope.init(db=str(db_path), name="custom", config={"lr": 0.01, "seed": 7}) as run:
        run.watch(model, optimizer)
        # The test's own hook, registered after watch's: it sees the same gradients.
        optimizer.register_step_pre_hook(
            lambda *_: seen.append([w.grad.detach().clone() for w in weights])
        )
        for _epoch in range(2):
            for step in range(STEPS):  # a full ring block (16 steps) and a partial one
                rows_ = slice(step * 8, step * 8 + 8)
                for half in (slice(0, 4), slice(4, 8)):  # gradient accumulation
                    xb, yb = x[rows_][half], y[rows_][half]
                    nn.functional.cross_entropy(model(xb), yb).div(2).backward()
                optimizer.step()
                optimizer.zero_grad()
            run.log_epoch(train_loss=0.5, train_acc=torch.tensor(0.25))
            snapshots.append([w.detach().clone() for w in weights])

    run_info = run_row(db_path, run.id)
    assert run_info["status"] == "completed" and run_info["arch"] == "custom"
    assert (run_info["depth"], run_info["epochs_total"], run_info["epochs_done"]) == (6, 2, 2)
    assert run_info["seed"] == 7
    config = json.loads(run_info["config"])
    assert config["user"] == {"lr": 0.01, "seed": 7}
    assert config["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    layers = rows(
        db_path,
        "SELECT name, kind, activation, shape FROM run_layers WHERE run_id = ? ORDER BY layer",
        run.id,
    )
    assert [r[0] for r in layers] == LAYERS
    assert [r[1] for r in layers] == [
        "Conv2d",
        "Embedding",
        "Conv1d",
        "BatchNorm1d",
        "LayerNorm",
        "Linear",
    ]
    assert layers[0][2] == "relu" and layers[3][2] == "none"  # nn.ReLU follows conv2 only
    assert [json.loads(r[3]) for r in layers] == [list(w.shape) for w in weights]

    assert len(seen) == 2 * STEPS
    stored = rows(
        db_path,
        f"SELECT epoch, layer, {', '.join(LAYER_STAT_FIELDS)}, grad_hist FROM layer_stats "
        "WHERE run_id = ? ORDER BY epoch, layer",
        run.id,
    )
    assert len(stored) == 2 * len(LAYERS)
    for epoch, layer, *values, hist_bytes in stored:
        got = dict(zip(LAYER_STAT_FIELDS, values, strict=True))
        steps = torch.stack(
            [seen[(epoch - 1) * STEPS + s][layer].reshape(-1) for s in range(STEPS)]
        )
        start, end = snapshots[epoch - 1][layer], snapshots[epoch][layer]
        want = {
            "grad_norm": float(steps.norm(dim=1).mean()),
            "grad_mean_abs": float(steps.abs().mean()),
            "grad_std": float(steps.double().std(unbiased=False)),
            "grad_max_abs": float(steps.abs().max()),
            "weight_norm": float(end.norm()),
            "update_ratio": float((end - start).norm() / end.norm()),
        }
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=2e-4, abs=1e-9), (epoch, layer, key)
        for key in ("act_mean", "act_std", "saturated_frac", "dead_frac"):
            assert got[key] is None  # no probe batch given
        last = steps[-1].numpy()
        hist = np.frombuffer(hist_bytes, dtype="<i4")
        assert hist.sum() == last.size and hist[HIST_BINS] == int((last == 0).sum())
        assert np.abs(hist[:HIST_BINS] - log_histogram(np.abs(last))).sum() <= 2
    metrics = rows(
        db_path,
        "SELECT train_loss, train_acc, test_loss FROM epoch_metrics WHERE run_id = ?",
        run.id,
    )
    assert metrics == [(0.5, 0.25, None), (0.5, 0.25, None)]


def test_probe_batch_measures_activation_health_and_prediction_spread(db_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 1)
    )
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU unit dead for every input
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = torch.randn(32, 4)
    with gradscope.init(db=str(db_path)) as run:
        run.watch(model, optimizer, probe=probe)
        model(probe).sum().backward()
        optimizer.step()
        run.log_epoch()
    stats = rows(
        db_path,
        "SELECT layer, act_mean, act_std, saturated_frac, dead_frac FROM layer_stats "
        "WHERE run_id = ? ORDER BY layer",
        run.id,
    )
    assert stats[0][4] == 1.0 and stats[0][3] is None  # relu layer: dead, saturation n/a
    with torch.no_grad():
        sig = torch.sigmoid(model[2](model[1](model[0](probe))))
        out = model(probe)
    assert stats[1][1] == pytest.approx(float(sig.mean()), rel=1e-5)
    assert stats[1][3] == pytest.approx(float(((sig < 0.01) | (sig > 0.99)).float().mean()))
    assert stats[2][3] is None and stats[2][4] is None  # output layer: activation unknown
    (pred_std,) = rows(db_path, "SELECT pred_std FROM epoch_metrics WHERE run_id = ?", run.id)[0]
    assert pred_std == pytest.approx(float(out.std(unbiased=False)), rel=1e-5)


def _tiny(db_path: Path, **init) -> tuple[gradscope.Run, nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = gradscope.init(db=str(db_path), **init)
    run.watch(model, optimizer)
    return run, model, optimizer


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, scale: float = 1.0) -> None:
    optimizer.zero_grad()
    (model(torch.ones(4, 3)).sum() * scale).backward()
    optimizer.step()


def test_exception_in_with_block_fails_the_run_with_its_text(db_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"), gradscope.init(db=str(db_path)) as run:
        run.log_epoch(train_loss=1.0)
        raise ValueError("boom at epoch 2")
    row = run_row(db_path, run.id)
    assert row["status"] == "failed" and row["error"] == "ValueError: boom at epoch 2"
    assert row["epochs_done"] == 1 and row["final_train_loss"] == 1.0


def test_keyboard_interrupt_marks_the_run_interrupted(db_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), gradscope.init(db=str(db_path)) as run:
        raise KeyboardInterrupt
    assert run_row(db_path, run.id)["status"] == "interrupted"


def test_non_finite_loss_marks_diverged_without_stopping_the_loop(db_path: Path) -> None:
    run, model, optimizer = _tiny(db_path)
    _step(model, optimizer)
    run.log_epoch(train_loss=0.3)
    assert not run.diverged
    run.log_epoch(train_loss=float("nan"))
    assert run.diverged
    run.log_epoch(train_loss=0.2)  # the loop goes on and is still recorded
    assert run.finish() == "diverged"
    row = run_row(db_path, run.id)
    assert row["status"] == "diverged" and "train_loss" in row["error"]
    assert (row["epochs_done"], row["epochs_total"]) == (3, 3)


def test_non_finite_gradient_marks_diverged(db_path: Path) -> None:
    run, model, optimizer = _tiny(db_path)
    _step(model, optimizer, scale=float("inf"))
    run.log_epoch()  # no loss given: the statistics tell
    assert run.diverged
    assert run.finish() == "diverged"


def test_finish_twice_is_harmless_and_logging_after_is_refused(db_path: Path) -> None:
    run, model, optimizer = _tiny(db_path)
    _step(model, optimizer)
    run.log_epoch(test_acc=0.5)
    assert run.finish() == "completed"
    assert run.finish() == "completed"
    with pytest.raises(RuntimeError, match="has finished"):
        run.log_epoch()
    _step(model, optimizer)  # the hook is gone: training goes on unrecorded
    row = run_row(db_path, run.id)
    assert row["status"] == "completed" and row["final_test_acc"] == 0.5


def test_config_must_be_json_able_and_small(db_path: Path) -> None:
    with pytest.raises(CustomConfigError, match="JSON-able"):
        gradscope.init(db=str(db_path), config={"fn": print})
    with pytest.raises(CustomConfigError, match="at most"):
        gradscope.init(db=str(db_path), config={"x": "a" * 10_000})
    assert not db_path.exists() or rows(db_path, "SELECT count(*) FROM runs") == [(0,)]


def test_a_frozen_model_is_refused(db_path: Path) -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with gradscope.init(db=str(db_path)) as run, pytest.raises(ValueError, match="frozen"):
        run.watch(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_low_precision_gradients_are_upcast(db_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(16, 4).to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.init(db=str(db_path)) as run:
        run.watch(model, optimizer)
        optimizer.zero_grad()
        model(torch.randn(8, 16, dtype=torch.bfloat16)).float().pow(2).sum().backward()
        grad = model.weight.grad.float()
        optimizer.step()
        run.log_epoch()
    (norm,) = rows(db_path, "SELECT grad_norm FROM layer_stats WHERE run_id = ?", run.id)[0]
    assert norm == pytest.approx(float(grad.norm()), rel=1e-5)


@pytest.mark.parametrize("reduce", ["in line", "on the measuring thread"])
def test_strided_sparse_and_missing_gradients_are_measured_as_dense_ones(
    db_path: Path, reduce: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook copies each gradient as it is into its weight's view of the ring: a
    channels_last convolution's strided gradient, a sparse embedding's gradient and a weight
    unused on even steps (no gradient: zeros) give the statistics of the dense gradient the
    next step pre-hook sees."""
    monkeypatch.setattr(gradscope_watch, "INLINE_BELOW", 10**9 if reduce == "in line" else 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    emb = nn.Embedding(10, 5, sparse=True)
    spare = nn.Linear(5, 5)
    model = nn.ModuleDict({"conv": conv, "emb": emb, "spare": spare})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = [conv.weight, emb.weight, spare.weight]
    seen: list[list[torch.Tensor]] = []
    with gradscope.init(db=str(db_path)) as run:
        run.watch(model, optimizer)
        optimizer.register_step_pre_hook(
            lambda *_: seen.append(
                [
                    torch.zeros(w.shape)
                    if w.grad is None
                    else w.grad.to_dense()
                    if w.grad.is_sparse
                    else w.grad.clone()
                    for w in weights
                ]
            )
        )
        for step in range(20):  # a full 16-step block and a partial one
            optimizer.zero_grad()
            x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
            out = conv(x).mean() + emb(torch.randint(0, 10, (4,))).sum()
            if step % 2:
                out = out + spare(torch.randn(3, 5)).pow(2).sum()
            out.backward()
            optimizer.step()
        assert not conv.weight.grad.is_contiguous() and emb.weight.grad.is_sparse  # as meant
        run.log_epoch()
    stored = rows(
        db_path,
        "SELECT grad_norm, grad_mean_abs, grad_std, grad_max_abs FROM layer_stats "
        "WHERE run_id = ? ORDER BY layer",
        run.id,
    )
    assert len(stored) == 3 and len(seen) == 20
    for layer, got in enumerate(stored):
        steps = torch.stack([step[layer].reshape(-1) for step in seen])
        want = (
            float(steps.norm(dim=1).mean()),
            float(steps.abs().mean()),
            float(steps.double().std(unbiased=False)),
            float(steps.abs().max()),
        )
        assert got == pytest.approx(want, rel=2e-4, abs=1e-9), layer


def test_grad_scaler_scale_is_undone(db_path: Path) -> None:
    """scaler.step() unscales before optimizer.step(), so the hook sees true gradients."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 5)
    (true,) = torch.autograd.grad(model(x).pow(2).mean(), model.weight)
    with gradscope.init(db=str(db_path)) as run:
        run.watch(model, optimizer)
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(optimizer)
        scaler.update()
        run.log_epoch()
    (norm,) = rows(db_path, "SELECT grad_norm FROM layer_stats WHERE run_id = ?", run.id)[0]
    assert norm == pytest.approx(float(true.norm()), rel=1e-5)


@pytest.mark.slow
def test_compiled_model_is_recorded_under_its_own_names(db_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    compiled = torch.compile(model, backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.init(db=str(db_path)) as run:
        run.watch(compiled, optimizer, probe=torch.randn(8, 3))
        compiled(torch.randn(8, 3)).sum().backward()
        optimizer.step()
        run.log_epoch()
    names = rows(db_path, "SELECT name FROM run_layers WHERE run_id = ? ORDER BY layer", run.id)
    assert names == [("0",), ("2",)]
    dead = rows(db_path, "SELECT dead_frac FROM layer_stats WHERE run_id = ? AND layer=0", run.id)
    assert dead[0][0] is not None


@pytest.mark.slow
def test_import_gradscope_does_not_load_torch() -> None:
    code = "import sys, gradscope; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


KILLED = """
import sys, torch, gradscope
run = gradscope.init(db=sys.argv[1], name="doomed", heartbeat_s=0.1)
model = torch.nn.Linear(2, 1)
run.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
run.log_epoch(train_loss=1.0)
run.diverged  # waits until the epoch is stored
print(run.id, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.slow
def test_a_killed_process_is_marked_lost_by_stale_recovery(db_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, "the child printed no run id"
        engine = make_engine(str(db_path))
        # Alive: its heartbeat is fresh, so recovery at the database's time leaves it alone.
        assert recover_lost(engine, 60.0) == {}
        proc.kill()  # SIGKILL: no atexit, no finally
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    later = db_now(engine) + timedelta(seconds=120)
    assert recover_lost(engine, 60.0, now=later) == {run_id: "failed"}
    row = run_row(db_path, run_id)
    assert row["status"] == "failed" and row["error"] == WORKER_LOST
    assert row["epochs_done"] == 1


def test_custom_run_exports_imports_and_tabulates(db_path: Path, tmp_path: Path) -> None:
    """A custom run passes the import's checks (its config is not a RunConfig) and appears in
    the CSV/Parquet tables with its layers' names and shapes."""
    torch.manual_seed(0)
    model = Custom()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    with gradscope.init(db=str(db_path), name="shared", config={"lr": 0.1}) as run:
        run.watch(model, optimizer, probe=x)
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            run.log_epoch(train_loss=1.0)
    source = make_engine(str(db_path))
    export_runs(source, [run.id], tmp_path / "out.db")
    target = make_engine(str(tmp_path / "target.db"))
    report = import_file(target, tmp_path / "out.db")
    assert [r.id for r in report.added] == [run.id]
    layers = export_tables(target, [run.id], tmp_path / "csv")[2]
    table = pd.read_csv(layers)
    assert list(table[table["epoch"] == 1]["layer_name"]) == LAYERS
    assert json.loads(table["shape"].iloc[0]) == [3, 1, 3, 3]
    source.dispose()
    target.dispose()


def test_import_refuses_a_custom_run_with_a_bad_layer(db_path: Path, tmp_path: Path) -> None:
    run, model, optimizer = _tiny(db_path)
    _step(model, optimizer)
    run.log_epoch()
    run.finish()
    engine = make_engine(str(db_path))
    export_runs(engine, [run.id], tmp_path / "out.db")
    with sqlite3.connect(tmp_path / "out.db") as conn:
        conn.execute("UPDATE run_layers SET activation = 'swishy', shape = '[2, \"x\"]'")
    with pytest.raises(ImportRefused, match="activation 'swishy' is not one of none, sigmoid"):
        import_file(make_engine(str(tmp_path / "target.db")), tmp_path / "out.db")
    engine.dispose()


UNFINISHED = """
import sys, gradscope
run = gradscope.init(db=sys.argv[1], name=sys.argv[2])
run.log_epoch(train_loss=1.0)
print(run.id, flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("crashed in the loop")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "status", "error"),
    [("end", "completed", None), ("raise", "failed", "RuntimeError: crashed in the loop")],
)
def test_a_script_that_never_finishes_its_run_is_finished_at_exit(
    db_path: Path, how: str, status: str, error: str | None
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", UNFINISHED, str(db_path), how],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == (0 if how == "end" else 1), out.stderr
    row = run_row(db_path, out.stdout.split()[0])
    assert (row["status"], row["error"], row["epochs_done"]) == (status, error, 1)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 10)
        self.head.weight = self.emb.weight  # tied: one layer

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(tokens))
        h, _ = self.att(h, h, h)
        return self.head(h)


def test_recurrent_attention_and_tied_weights_are_layers(db_path: Path) -> None:
    torch.manual_seed(0)
    model = Recurrent()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, 10, (4, 5))
    with gradscope.init(db=str(db_path)) as run:
        run.watch(model, optimizer, probe=(tokens,))
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 10), tokens.reshape(-1))
        loss.backward()
        want = float(model.lstm.weight_hh_l0.grad.norm())
        optimizer.step()
        run.log_epoch()
    got = rows(
        db_path,
        "SELECT l.name, l.kind, s.grad_norm FROM run_layers l JOIN layer_stats s "
        "ON s.run_id = l.run_id AND s.layer = l.layer WHERE l.run_id = ? ORDER BY l.layer",
        run.id,
    )
    assert [(name, kind) for name, kind, _ in got] == [
        ("emb", "Embedding"),
        ("lstm.weight_ih_l0", "LSTM"),
        ("lstm.weight_hh_l0", "LSTM"),
        ("att.in_proj_weight", "MultiheadAttention"),
        ("att.out_proj", "NonDynamicallyQuantizableLinear"),
    ]
    assert got[2][2] == pytest.approx(want, rel=1e-5)


def test_bad_metrics_are_refused_at_once(db_path: Path) -> None:
    with gradscope.init(db=str(db_path)) as run:
        with pytest.raises(ValueError, match="one-element"):
            run.log_epoch(train_loss=torch.ones(3))
        with pytest.raises(TypeError, match="test_acc must be a number"):
            run.log_epoch(test_acc="high")
        run.log_epoch(train_loss=torch.tensor(0.5, requires_grad=True) * 1, test_acc=np.float32(1))
    row = run_row(db_path, run.id)
    assert (row["status"], row["epochs_done"], row["final_test_acc"]) == ("completed", 1, 1.0)


def test_a_cancel_request_reaches_the_loop_through_the_heartbeat(db_path: Path) -> None:
    from gradscope.db.lifecycle import cancel_runs

    with gradscope.init(db=str(db_path)) as run:
        assert run._heartbeat.beat() and not run.cancel_requested
        engine = make_engine(str(db_path))
        assert cancel_runs(engine, [run.id])[run.id] == "cancel requested"
        assert run._heartbeat.beat()  # what the heartbeat thread does every 2 s
        assert run.cancel_requested and not run.lost
    engine.dispose()


def test_a_run_marked_lost_stops_recording(db_path: Path) -> None:
    """Another worker marked it lost (the process stalled past the stale limit): the run's
    rows stay as recovery left them, and its later epochs are not written."""
    run = gradscope.init(db=str(db_path))
    run.log_epoch(train_loss=1.0)
    run.diverged  # noqa: B018 - waits until the epoch is stored
    engine = make_engine(str(db_path))
    later = db_now(engine) + timedelta(seconds=120)
    assert recover_lost(engine, 60.0, now=later) == {run.id: "failed"}
    assert not run._heartbeat.beat()
    assert run.lost
    run.log_epoch(train_loss=0.5)
    run.finish()
    row = run_row(db_path, run.id)
    assert (row["status"], row["error"], row["epochs_done"]) == ("failed", WORKER_LOST, 1)
    engine.dispose()


def test_runs_and_show_list_a_custom_run(db_path: Path) -> None:
    from typer.testing import CliRunner

    from gradscope.cli import app

    run, model, optimizer = _tiny(db_path, name="cli run", config={"lr": 0.1, "tag": "\x1b[2J"})
    _step(model, optimizer)
    run.log_epoch(train_loss=0.25)
    run.finish()
    cli = CliRunner()
    listed = cli.invoke(app, ["runs", "--db", str(db_path), "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["arch"], row["status"], row["depth"]) == ("custom", "completed", 1)
    shown = cli.invoke(app, ["show", run.id[:8], "--db", str(db_path)])
    assert shown.exit_code == 0, shown.output
    assert "lr=0.1" in shown.output and "model layers=1" in shown.output
    assert "\x1b" not in shown.output and "tag=\\x1b[2J" in shown.output  # escaped, not obeyed
