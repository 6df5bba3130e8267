"""What does `run.watch` cost a user's own loop? Issue 12's benchmark; prints ratios.

(a) The 20-layer sigmoid MLP of benchmarks/overhead.py (depth 20, width 64, 4096 moons samples,
    batch 64, SGD, 5 epochs, one thread), written as a plain loop; target <= 1.10x.
(b) A small CNN (examples/own_loop_cnn.py: two convolutions, a batch norm, a linear head) on
    12x12 synthetic images, batch 32, Adam, 5 epochs.
(c) Cockpit's 3C3D CNN (3 conv + 3 dense, 895k parameters) on random 32x32x3 images, batch 128,
    SGD with momentum, 2 epochs of 4 steps (10 classes).
(d) A small Transformer encoder (4 layers, d_model 128, 4 heads, feed-forward 512, token
    embedding, mean-pooled head; 0.93M parameters), sequences of 64 tokens, batch 32, AdamW,
    2 epochs of 8 steps.
Where installed (they are not dependencies), the same loops with wandb.watch(log="gradients",
log_freq=1) (offline) and with TensorBoard histograms of every weight's gradient every step are
timed beside gradscope, in the same paired rounds.
Each round runs the plain loop and the same loop with run.watch + run.log_epoch + finish (into
a real SQLite file) in fresh processes, in alternating order; the ratio is the median over
paired rounds. gradscope.init and run.watch (creating the database and the run) are a
once-per-run cost, timed apart. A third, in-process pass says where the time goes: the step
pre-hook on the training thread, log_epoch on the training thread, and finish() (waiting for
the measuring thread's last epoch and the final database write).

With --noise each round also runs the plain loop a second time: the plain / plain ratios show
how far two identical processes differ on this machine (on a shared 2-core VM, single pairs
differ by up to +-10%), the yardstick for reading the watched / plain median.

    python benchmarks/api_overhead.py [--rounds 7] [--only mlp|cnn|3c3d|transformer] [--noise]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The repository root first: the benchmark runs from a checkout.
sys.path[0] = str(HERE.parent)
EPOCHS = 5
EPOCHS_OF = {"3c3d": 2, "transformer": 2}  # the larger models: fewer, longer epochs
WORKLOADS = (
    ("mlp", "(a) 20-layer sigmoid MLP"),
    ("cnn", "(b) small CNN"),
    ("3c3d", "(c) 3C3D CNN, 32x32x3, batch 128"),
    ("transformer", "(d) Transformer encoder, 4 layers, d_model 128, seq 64, AdamW"),
)


def three_c_three_d():  # noqa: ANN201 - nn.Module
    """Cockpit's 3C3D (from DeepOBS): 3 conv layers with max pooling, 3 dense layers."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding="valid"),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(64, 96, 3, padding="valid"),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(96, 128, 3, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


class Encoder:  # built lazily: torch is imported in the child only
    @staticmethod
    def build():  # noqa: ANN205 - nn.Module
        import torch
        from torch import nn

        class TinyEncoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(1000, 128)
                layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
                self.head = nn.Linear(128, 10)

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

        return TinyEncoder()


def workload(name: str):  # noqa: ANN201 - (model, optimizer, batches, loss_fn, probe)
    import torch

    if name == "mlp":
        from gradscope.runner.datasets import load_dataset
        from gradscope.runner.networks import build_model
        from gradscope.vocab.config import make_config

        cfg = make_config(
            {"arch": "sigmoid", "depth": 20, "width": 64, "samples": 4096, "batch_size": 64}
        )
        data = load_dataset(cfg)
        torch.manual_seed(0)
        model = build_model(cfg, data.n_features)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        return model, optimizer, x, y, 64, torch.nn.BCEWithLogitsLoss()
    if name == "3c3d":
        torch.manual_seed(0)
        model = three_c_three_d()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(512, 3, 32, 32), torch.randint(0, 10, (512,))
        return model, optimizer, x, y, 128, torch.nn.CrossEntropyLoss()
    if name == "transformer":
        torch.manual_seed(0)
        model = Encoder.build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randint(0, 1000, (256, 64)), torch.randint(0, 10, (256,))
        return model, optimizer, x, y, 32, torch.nn.CrossEntropyLoss()
    sys.path.insert(0, str(HERE.parent / "examples"))
    from own_loop_cnn import bars, build

    torch.manual_seed(0)
    x, y = bars(1024, 0)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return model, optimizer, x, y, 32, torch.nn.CrossEntropyLoss()


def child(name: str, mode: str) -> None:
    """In a fresh process: time the loop, print {"seconds": ...} (and a breakdown)."""
    import torch

    torch.set_num_threads(1)
    model, optimizer, x, y, batch, loss_fn = workload(name)
    import gradscope  # imported before timing: both sides time the loop only

    tmp = tempfile.TemporaryDirectory()
    hook_s = log_s = 0.0
    setup = time.perf_counter()
    run = None
    peer = None  # a peer's per-step call (TensorBoard histograms)
    if mode == "wandb":
        import wandb

        wb = wandb.init(mode="offline", dir=tmp.name, project="overhead")
        wandb.watch(model, log="gradients", log_freq=1)
        peer = lambda step, _loss: wb.log({"step": step})  # noqa: E731 - wandb logs on log()
    elif mode == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tmp.name)
        weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]

        def peer(step: int, _loss: object) -> None:
            for n, p in weights:
                writer.add_histogram(n, p.grad, step)

    elif mode != "plain":
        run = gradscope.init(db=str(Path(tmp.name) / "bench.db"), name=f"bench {name}", quiet=True)
        run.watch(model, optimizer)
        if mode == "breakdown":
            watcher = run._watcher  # time the hook itself around the real one
            inner = watcher._pre_step_of(0)

            def timed(*args: object) -> None:
                nonlocal hook_s
                t = time.perf_counter()
                inner(*args)
                hook_s += time.perf_counter() - t

            for handle in watcher._handles:
                handle.remove()
            watcher._handles = [optimizer.register_step_pre_hook(timed)]
    # Training is timed from here: creating the database and the run is a once-per-run cost,
    # reported apart (benchmarks/overhead.py likewise creates its run before timing).
    started = time.perf_counter()
    init_s = started - setup
    shuffle = torch.Generator().manual_seed(0)
    steps = 0
    for _ in range(EPOCHS_OF.get(name, EPOCHS)):
        for idx in torch.randperm(len(x), generator=shuffle).split(batch):
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if peer is not None:  # after backward, as a user would (wandb: its hooks ran)
                peer(steps, loss)
            optimizer.step()
            steps += 1
        if run is not None:
            t = time.perf_counter()
            run.log_epoch()
            log_s += time.perf_counter() - t
    loop_s = time.perf_counter() - started
    finish_s = 0.0
    if run is not None:
        t = time.perf_counter()
        run.finish()
        finish_s = time.perf_counter() - t
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "loop": loop_s,
                "steps": steps,
                "hook": hook_s,
                "log_epoch": log_s,
                "finish": finish_s,
                "init": init_s,
            }
        )
    )
    tmp.cleanup()


def run_child(name: str, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-P", __file__, "--child", name, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=[w for w, _ in WORKLOADS], help="Run one workload only.")
    parser.add_argument("--noise", action="store_true", help="also time plain against plain")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    peers = [
        p for p, module in (("wandb", "wandb"), ("tensorboard", "tensorboard")) if _has(module)
    ]
    for name, what in WORKLOADS:
        if args.only not in (None, name):
            continue
        ratios, plain_s, noise = [], [], []
        peer_ratios: dict[str, list[float]] = {p: [] for p in peers}
        sides = ("plain", "watched", *(["plain again"] if args.noise else []), *peers)
        for i in range(args.rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            got = {side: run_child(name, side.split()[0])["seconds"] for side in order}
            ratios.append(got["watched"] / got["plain"])
            plain_s.append(got["plain"])
            if args.noise:
                noise.append(got["plain again"] / got["plain"])
            for p in peers:
                peer_ratios[p].append(got[p] / got["plain"])
        parts = run_child(name, "breakdown")
        step_ms = 1000 * statistics.median(plain_s) / parts["steps"]
        epochs = EPOCHS_OF.get(name, EPOCHS)
        print(
            f"{what}: watched / plain, median of {args.rounds} paired rounds: "
            f"{statistics.median(ratios):.3f}  (plain {statistics.median(plain_s):.2f} s, "
            f"{step_ms:.2f} ms/step); pairs ranged {min(ratios):.3f}-{max(ratios):.3f}"
        )
        for p, values in peer_ratios.items():
            label = {
                "wandb": "wandb.watch(log='gradients', log_freq=1)",
                "tensorboard": "TensorBoard histograms every step",
            }[p]
            print(
                f"   {label} / plain: median {statistics.median(values):.3f}, pairs ranged "
                f"{min(values):.3f}-{max(values):.3f}"
            )
        if noise:
            print(
                f"   noise: plain / plain, median {statistics.median(noise):.3f}, pairs ranged "
                f"{min(noise):.3f}-{max(noise):.3f}"
            )
        print(
            f"   where the time goes: step hook {1000 * parts['hook'] / parts['steps']:.3f} "
            f"ms/step on the training thread; log_epoch {1000 * parts['log_epoch'] / epochs:.1f}"
            f" ms/epoch; finish {1000 * parts['finish']:.1f} ms (last epoch + final write); "
            f"once per run, init + watch {1000 * parts['init']:.0f} ms (a new SQLite file)"
        )
    print("   [target: <= 1.10 for (a), <= 1.05 for (c) and (d)]")
    if not peers:
        print("   (wandb and TensorBoard are not installed here: no peer was timed)")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
