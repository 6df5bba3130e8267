"""A bare PyTorch script of the overhead benchmark's workload: no recording, no database.

Depth 20, width 64, sigmoid, 4096 moons samples, batch 64, SGD lr 0.1, 5 epochs, one thread.
"""

import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

torch.set_num_threads(1)
x, y = make_moons(4096, noise=0.2, random_state=0)
x_tr, _, y_tr, _ = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
x_tr = (x_tr - x_tr.mean(0)) / x_tr.std(0)
x_t = torch.tensor(x_tr, dtype=torch.float32)
y_t = torch.tensor(y_tr, dtype=torch.float32)
torch.manual_seed(0)
layers: list[torch.nn.Module] = []
width_in = 2
for _ in range(20):
    layers += [torch.nn.Linear(width_in, 64), torch.nn.Sigmoid()]
    width_in = 64
model = torch.nn.Sequential(*layers, torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = torch.nn.BCEWithLogitsLoss()
for _ in range(5):
    for idx in torch.randperm(len(x_t)).split(64):
        opt.zero_grad()
        loss_fn(model(x_t[idx]).squeeze(-1), y_t[idx]).backward()
        opt.step()
print("done")
