"""The recorded statistics equal a direct PyTorch computation on a tiny seeded model."""

from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from reference_loop import make_optimizer, train

from gradscope.runner import gradient_stats as probes
from gradscope.runner.datasets import load_dataset
from gradscope.runner.gradient_stats import EpochGradStats, activation_stats
from gradscope.runner.networks import build_model
from gradscope.vocab.config import make_config
from gradscope.vocab.fields import HIST_BINS, HIST_LOG10_MAX, HIST_LOG10_MIN


class ListRecorder:
    def __init__(self) -> None:
        self.records = []
        self.layers = []

    def start(self, layers, points, device) -> None:  # noqa: ANN001
        self.layers = layers

    def epoch(self, record) -> bool:  # noqa: ANN001
        self.records.append(record)
        return False


def log_histogram(magnitudes: np.ndarray) -> np.ndarray:
    """Counts of log10 of the non-zero magnitudes over the shared bins, in float64."""
    logs = np.log10(magnitudes[magnitudes > 0])
    edges = np.linspace(HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS + 1)
    counts, _ = np.histogram(np.clip(logs, HIST_LOG10_MIN, HIST_LOG10_MAX - 1e-9), bins=edges)
    return counts


def per_step_gradient_stats(grads: torch.Tensor) -> dict[str, float]:
    """The recorded gradient statistics of one layer from its [steps, elements] gradients."""
    return {
        "grad_norm": float(grads.norm(dim=1).mean()),
        "grad_mean_abs": float(grads.abs().mean()),
        "grad_std": float(grads.std(unbiased=False)),
        "grad_max_abs": float(grads.abs().max()),
    }


def reference_run(cfg):  # noqa: ANN001, ANN201
    """The same training written plainly, with statistics computed per layer in float64."""
    data = load_dataset(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.n_features)
    optimizer = make_optimizer(cfg, model.parameters())
    shuffle = torch.Generator().manual_seed(cfg.seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(data.x_test)
    epochs = []
    for _ in range(cfg.epochs):
        start = [lin.weight.detach().clone() for lin in model.linears]
        per_step: list[list[torch.Tensor]] = []
        for idx in torch.randperm(len(x), generator=shuffle).split(cfg.batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x[idx]), y[idx], reduction="sum"
            ) / len(idx)
            loss.backward()
            per_step.append([lin.weight.grad.detach().double().clone() for lin in model.linears])
            optimizer.step()
        layers = []
        for i, lin in enumerate(model.linears):
            grads = torch.stack([step[i] for step in per_step])
            w = lin.weight.detach().double()
            layers.append(
                {
                    **per_step_gradient_stats(grads.flatten(1)),
                    "weight_norm": float(w.norm()),
                    "update_ratio": float((w - start[i].double()).norm() / w.norm()),
                    "last_grad": per_step[-1][i],
                }
            )
        acts: list[torch.Tensor] = []
        with torch.no_grad():
            model.forward_collect(x_test, acts)
        epochs.append((layers, acts))
    return epochs


@pytest.mark.parametrize("arch", ["sigmoid", "relu", "resnet"])
def test_statistics_match_direct_computation(arch: str) -> None:
    cfg = make_config(
        {
            "arch": arch,
            "depth": 3,
            "width": 8,
            "samples": 200,
            "epochs": 2,
            "batch_size": 32,
            "optimizer": "sgd",
            "lr": 0.5,
            "momentum": 0.5,
        }
    )
    rec = ListRecorder()
    assert train(cfg, rec).status == "completed"
    reference = reference_run(cfg)
    assert len(rec.records) == cfg.epochs
    for record, (ref_layers, ref_acts) in zip(rec.records, reference, strict=True):
        assert len(record.layer_stats) == cfg.depth + 1
        for got, want, act in zip(record.layer_stats, ref_layers, ref_acts, strict=True):
            for key in (
                "grad_norm",
                "grad_mean_abs",
                "grad_std",
                "grad_max_abs",
                "weight_norm",
                "update_ratio",
            ):
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-12), key
            a = act.double()
            assert got["act_mean"] == pytest.approx(float(a.mean()), rel=1e-4, abs=1e-9)
            assert got["act_std"] == pytest.approx(
                float(a.std(dim=0, unbiased=False).mean()), rel=1e-4, abs=1e-12
            )
            # The histogram is of the epoch's last step's gradient.
            g = want["last_grad"].abs().flatten().numpy()
            hist = np.frombuffer(got["grad_hist"], dtype="<i4")
            assert hist.sum() == g.size
            assert hist[HIST_BINS] == int((g == 0).sum())
            # float32 vs float64 log10 can move a value sitting on a bin edge by one bin.
            assert np.abs(hist[:HIST_BINS] - log_histogram(g)).sum() <= 2


def test_activation_health_counts_saturated_and_dead_units_not_nan() -> None:
    sig = torch.tensor([[[0.001, 0.5, 0.999], [0.002, 0.6, 0.5]]])  # [K=1, N=2, units=3]
    relu = torch.tensor([[[0.0, 1.0, float("nan")], [0.0, 0.0, float("nan")]]])
    stats = activation_stats([sig, relu], ["sigmoid", "relu"])
    assert stats["saturated_frac"][0, 0] == pytest.approx(3 / 6)
    assert math.isnan(float(stats["dead_frac"][0, 0]))
    # Unit 0 is zero for every input: dead. Unit 2 is NaN: not dead. Unit 1 is alive.
    assert stats["dead_frac"][1, 0] == pytest.approx(1 / 3)
    assert math.isnan(float(stats["saturated_frac"][1, 0]))


def test_divergence_is_a_non_finite_loss_or_gradient_statistic() -> None:
    from gradscope.runner.gradient_stats import divergence

    fine = {"train_loss": 0.5, "test_loss": 0.6}
    healthy = [{"grad_norm": 1.0, "saturated_frac": math.nan, "update_ratio": math.nan}]
    assert divergence(3, fine, healthy) is None  # not-applicable NaNs are not divergence
    assert divergence(3, {**fine, "test_loss": math.inf}, healthy) == (
        "test_loss became non-finite in epoch 3"
    )
    exploded = [*healthy, {"grad_norm": 2.0, "grad_max_abs": math.inf}]
    assert divergence(4, fine, exploded) == "grad_max_abs of layer 1 became non-finite in epoch 4"


def _direct_layer_stats(steps: list[torch.Tensor], sizes: list[int], members: int):  # noqa: ANN202
    """[L][K] dicts of the per-step statistics, computed slice by slice in float64."""
    out, offset = [], 0
    for n in sizes:
        per_member = []
        for k in range(members):
            lo = offset + k * n
            per_member.append(
                per_step_gradient_stats(torch.stack([s[lo : lo + n] for s in steps]).double())
            )
        out.append(per_member)
        offset += n * members
    return out


@pytest.mark.parametrize("threaded", [False, True])
def test_gradients_reduced_in_blocks_equal_per_step_statistics(threaded: bool, monkeypatch) -> None:  # noqa: ANN001
    # Blocks of 3 steps: epochs of 7, 3, 1 and 5 steps fill blocks partly and exactly and
    # wrap the two-block ring across epochs; the caller overwrites its gradient buffer right
    # after each step, as the training loop does, while the other thread reduces.
    monkeypatch.setattr(probes, "BLOCK_STEPS", 3)
    sizes, members = [6, 12, 12, 12, 4], 2
    total = sum(sizes) * members
    gen = torch.Generator().manual_seed(0)
    executor = ThreadPoolExecutor(max_workers=1) if threaded else None
    probe = EpochGradStats(sizes, members, torch.device("cpu"), executor)
    assert probe.block == 3
    weights = torch.randn(total, generator=gen)
    buffer = torch.empty(total)
    try:
        for epoch, n_steps in enumerate((7, 3, 1, 5)):
            start = weights.clone()
            probe.begin(weights)
            seen = []
            for step in range(n_steps):
                buffer.copy_(torch.randn(total, generator=gen) * 10.0 ** -(step % 4))
                buffer[::7] = 0.0
                probe.step(buffer)
                seen.append(buffer.clone())
            weights = weights + 0.01 * torch.randn(total, generator=gen)
            finish = probe.finish_later() if threaded else None
            if finish is None:
                got = probe.finish(weights)
            elif epoch % 2:  # on the measuring thread, as between epochs
                got = executor.submit(finish, weights).result()
            else:  # on the caller's thread, as after the last epoch
                got = finish(weights)
            want = _direct_layer_stats(seen, sizes, members)
            offset = 0
            for layer, n in enumerate(sizes):
                for k in range(members):
                    for key, value in want[layer][k].items():
                        assert float(got[key][layer, k]) == pytest.approx(value, rel=1e-5), key
                    w = weights[offset + k * n : offset + (k + 1) * n].double()
                    moved = w - start[offset + k * n : offset + (k + 1) * n].double()
                    assert float(got["weight_norm"][layer, k]) == pytest.approx(
                        float(w.norm()), rel=1e-5
                    )
                    assert float(got["update_ratio"][layer, k]) == pytest.approx(
                        float(moved.norm() / w.norm()), rel=1e-4
                    )
                    # The histogram is of the epoch's last step.
                    last = seen[-1][offset + k * n : offset + (k + 1) * n].abs().numpy()
                    hist = got["grad_hist"][layer, k].numpy()
                    assert int(hist.sum()) == n
                    assert int(hist[HIST_BINS]) == int((last == 0).sum())
                    assert np.abs(hist[:HIST_BINS] - log_histogram(last)).sum() <= 2
                offset += n * members
    finally:
        if executor is not None:
            executor.shutdown()


def test_histogram_places_every_float32_magnitude() -> None:
    # Zeros (of either sign), the smallest subnormal, values beyond both ends of the range,
    # both infinities and NaN, beside ordinary values, in three layers of two members.
    sizes, members = [5, 9, 4], 2
    probe = EpochGradStats(sizes, members, torch.device("cpu"))
    specials = [0.0, -0.0, 1.4e-45, 3e-30, -1e-12, 99.0, -3.4e38, math.inf, -math.inf, math.nan]
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(sum(sizes) * members, generator=gen) * 1e-3
    values[: len(specials)] = torch.tensor(specials)
    values[-len(specials) :] = torch.tensor(specials[::-1])
    got = probe._histogram(values).numpy()
    offset = 0
    for layer, n in enumerate(sizes):
        for k in range(members):
            part = values[offset + k * n : offset + (k + 1) * n].double().abs().numpy()
            finite = np.isfinite(part)
            per_decade = HIST_BINS / (HIST_LOG10_MAX - HIST_LOG10_MIN)
            bins = np.floor((np.log10(part[finite & (part > 0)]) - HIST_LOG10_MIN) * per_decade)
            want = np.bincount(np.clip(bins, 0, HIST_BINS - 1).astype(int), minlength=HIST_BINS)
            assert got[layer, k, :HIST_BINS].tolist() == want.tolist()
            assert got[layer, k, HIST_BINS] == int((part == 0).sum())
            assert got[layer, k, HIST_BINS + 1] == int((~finite).sum())
        offset += n * members


def test_histogram_bins_are_exact_at_every_edge() -> None:
    # Each bin edge's float32 neighbours (4 either side, both signs) and a stride through all
    # float32 bit patterns, against log10 in float64 (float32 log10 misplaced hundreds of
    # these by a rounding): the bins come from the bits, so none may be off.
    edges = np.array(
        [np.float32(10.0 ** (HIST_LOG10_MIN + k / 4)).view(np.uint32) for k in range(1, HIST_BINS)],
        dtype=np.int64,
    )
    near = (edges[:, None] + np.arange(-4, 5)).ravel()
    stride = np.arange(0, 1 << 32, 7919, dtype=np.int64)
    bits = np.concatenate([near, near | (1 << 31), stride]).astype(np.uint32)
    values = bits.view(np.float32)
    probe = EpochGradStats([len(values)], 1, torch.device("cpu"))
    got = probe._histogram(torch.from_numpy(values.copy()))[0, 0].numpy()
    with np.errstate(invalid="ignore"):  # NaN bit patterns
        magnitude = np.abs(values.astype(np.float64))
    finite = np.isfinite(magnitude)
    positive = magnitude[finite & (magnitude > 0)]
    bins = np.floor(
        (np.log10(positive) - HIST_LOG10_MIN) * HIST_BINS / (HIST_LOG10_MAX - HIST_LOG10_MIN)
    )
    want = np.bincount(np.clip(bins, 0, HIST_BINS - 1).astype(int), minlength=HIST_BINS)
    assert got[:HIST_BINS].tolist() == want.tolist()
    assert got[HIST_BINS] == int((magnitude == 0).sum())
    assert got[HIST_BINS + 1] == int((~finite).sum())


def _layout_stats(
    layout: str,
    epochs: list[list[list[torch.Tensor | None]]],
    shapes: list,
    executor: ThreadPoolExecutor | None = None,
) -> tuple[list, list]:
    """Each epoch's statistics from one layout of EpochGradStats fed the same gradients:
    "usual" (two ring blocks), "lean" (one ring row) or "rowless" (no ring: reduced in line),
    and each epoch's per-step norms as on_block (the live spike check) was handed them."""
    sizes = [math.prod(s) for s in shapes]
    lean = layout != "usual"
    probe = EpochGradStats(
        sizes,
        1,
        torch.device("cpu"),
        executor,
        shapes=shapes,
        lean=lean,
        low_memory=layout == "rowless",
    )
    assert (probe.lean, probe.rowless) == (lean, layout == "rowless")
    blocks: list[tuple[int, torch.Tensor]] = []
    caller = threading.get_ident()

    def on_block(norms: torch.Tensor, done: int) -> None:
        # With an executor, off the training thread (it copies the norms to the host).
        assert (threading.get_ident() != caller) == (executor is not None)
        blocks.append((done, norms.clone()))

    probe.on_block = on_block
    norms_seen = []
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    out = []
    for steps in epochs:
        if lean:
            probe.begin_params(weights)
        else:
            probe.begin(torch.cat([w.reshape(-1) for w in weights]))
        for grads in steps:
            probe.step(grads)
        weights = [w + 0.01 * torch.randn(w.shape, generator=gen) for w in weights]
        if lean:
            moved = probe.close_params(weights)
            finish = probe.finish_later()
            probe.begin(None)
            got = finish(moved) if executor is None else executor.submit(finish, moved).result()
        else:
            got = probe.finish(torch.cat([w.reshape(-1) for w in weights]))
        out.append({k: v.clone() for k, v in got.items()})
        # Blocks come in order, each after `done` steps of its epoch.
        assert [done for done, _ in blocks] == list(
            itertools.accumulate([0] + [len(n) for _, n in blocks[:-1]])
        )
        norms_seen.append(torch.cat([n for _, n in blocks]))
        blocks.clear()
    return out, norms_seen


@pytest.mark.parametrize(("chunk", "counting"), [(5, "bincount"), (1 << 16, "index_add")])
def test_rowless_steps_give_the_ring_layouts_statistics(
    monkeypatch: pytest.MonkeyPatch, chunk: int, counting: str
) -> None:
    """The rowless layout (each step reduced in line, chunk by chunk, no ring row) against the
    usual and the lean layouts, fed the same hostile gradients: zeros, a missing gradient,
    values whose squares overflow float32, a subnormal, bf16, a channels_last
    gradient, then an epoch that diverges (inf, then NaN) part-way. Sums agree to float32
    rounding; maxima, histograms and the moment of divergence exactly. Counted by bincount
    (CPUs) and by index_add_ (accelerators: no host sync)."""
    if counting == "index_add":
        monkeypatch.setattr(probes, "ROWLESS_BINCOUNT", set())
    monkeypatch.setitem(probes.ROWLESS_CHUNK, "cpu", chunk)
    monkeypatch.setattr(probes, "CHUNK", chunk)
    shapes = [[6, 3, 2, 2], [9, 11], [4, 9]]
    gen = torch.Generator().manual_seed(0)

    def step(scale: float, kind: str = "") -> list[torch.Tensor | None]:
        grads: list[torch.Tensor | None] = [torch.randn(s, generator=gen) * scale for s in shapes]
        conv = grads[0]
        assert conv is not None
        grads[0] = conv.contiguous(memory_format=torch.channels_last)  # strided, dense
        if kind == "huge":
            grads[1][0, :4] = torch.tensor([3e37, -1e20, 1e-40, 0.0])  # type: ignore[index]
        if kind == "missing":
            grads[2] = None
        if kind == "bf16":
            grads[1] = grads[1].to(torch.bfloat16)  # type: ignore[union-attr]
        if kind in ("inf", "nan"):
            grads[1][2, 3] = math.inf if kind == "inf" else math.nan  # type: ignore[index]
        return grads

    epochs = [
        [step(1.0), step(1e-3, "huge"), step(1e-6, "missing")],
        [step(10.0, "bf16"), step(1.0)],
        [step(1.0), step(1.0, "inf"), step(1.0), step(1.0, "nan")],
    ]
    usual, usual_norms = _layout_stats("usual", epochs, shapes)
    executor = ThreadPoolExecutor(max_workers=1)  # the rowless on_block calls go to it
    try:
        results = {}
        for layout in ("lean", "rowless"):
            results[layout] = _layout_stats(layout, epochs, shapes, executor)
    finally:
        executor.shutdown()
    for layout, (got, norms) in results.items():
        for want_norms, have_norms in zip(usual_norms, norms, strict=True):
            assert torch.allclose(want_norms, have_norms, rtol=1e-5, atol=0.0, equal_nan=True)
        for epoch, (want, have) in enumerate(zip(usual, got, strict=True)):
            assert want.keys() == have.keys()
            for key in want:
                a, b = want[key].double(), have[key].double()
                where = f"{layout}, epoch {epoch + 1}, {key}"
                if key in ("grad_hist", "grad_max_abs", "first_nonfinite_step"):
                    assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0)), where
                else:
                    assert torch.equal(a.isnan(), b.isnan()), where
                    assert torch.allclose(a, b, rtol=1e-5, atol=0.0, equal_nan=True), where
    # The hostile values reached the statistics.
    assert float(usual[0]["grad_max_abs"][1, 0]) == float(torch.tensor(3e37))
    assert float(usual[2]["first_nonfinite_step"][0, 0]) == 2.0
