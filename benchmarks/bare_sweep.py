"""A plain PyTorch script training the sweep of benchmarks/sweep.py one run after another, the
way one would without gradscope: no recording, no database.

arch {sigmoid, relu, resnet} x 16 seeds, depth 10, width 32, moons (2048 samples, noise 0.2,
a stratified 25% test split), Adam lr 1e-3, batch 64, 20 epochs, one thread. Options change the
seeds and epochs (for a quick run).
"""

import argparse

import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, default=16)
parser.add_argument("--epochs", type=int, default=20)
args = parser.parse_args()
torch.set_num_threads(1)


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.relu(self.linear(h))


def model(arch: str, depth: int = 10, width: int = 32) -> nn.Module:
    act = nn.Sigmoid if arch == "sigmoid" else nn.ReLU
    if arch == "resnet":
        hidden = [nn.Linear(2, width), nn.ReLU(), *[Residual(width) for _ in range(depth - 1)]]
    else:
        hidden = [nn.Linear(2, width), act()]
        for _ in range(depth - 1):
            hidden += [nn.Linear(width, width), act()]
    return nn.Sequential(*hidden, nn.Linear(width, 1))


for arch in ("sigmoid", "relu", "resnet"):
    for seed in range(args.seeds):
        x, y = make_moons(2048, noise=0.2, random_state=seed)
        x_tr, _, y_tr, _ = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
        x_tr = (x_tr - x_tr.mean(0)) / x_tr.std(0)
        x_t = torch.tensor(x_tr, dtype=torch.float32)
        y_t = torch.tensor(y_tr, dtype=torch.float32)
        torch.manual_seed(seed)
        net = model(arch)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_fn = nn.BCEWithLogitsLoss()
        for _ in range(args.epochs):
            for idx in torch.randperm(len(x_t)).split(64):
                opt.zero_grad()
                loss_fn(net(x_t[idx]).squeeze(-1), y_t[idx]).backward()
                opt.step()
print("done")
