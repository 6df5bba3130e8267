"""The three networks compared: sigmoid everywhere, ReLU hidden layers, and residual MLPs.

`depth` counts hidden Linear layers for every architecture, so equal depths compare fairly;
each model ends with Linear(width, 1) whose logit goes through a sigmoid (in the loss).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradscope.vocab.config import RunConfig
from gradscope.vocab.records import LayerInfo

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


class MLP(nn.Module):
    """Plain or residual MLP; `linears` are in forward order (index 0 nearest the input).

    sigmoid/relu: h = act(Linear(h)) for each hidden layer.
    resnet: h = act(Linear_in(x)), then depth-1 blocks h = h + act(Linear(h)).
    """

    def __init__(
        self, n_features: int, depth: int, width: int, activation: str, residual: bool
    ) -> None:
        super().__init__()
        sizes = [n_features] + [width] * depth
        self.linears = nn.ModuleList(
            [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            + [nn.Linear(width, 1)]
        )
        self.activation = activation
        self.residual = residual
        self._act = _ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape [batch]."""
        return self.forward_collect(x, None)

    def forward_collect(self, x: Tensor, activations: list[Tensor] | None) -> Tensor:
        """Logits; when `activations` is a list, each hidden layer's activation output is
        appended to it (the units whose health is measured), then the output probability."""
        h = x
        hidden = self.linears[:-1]
        for i, linear in enumerate(hidden):
            a = self._act(linear(h))
            if activations is not None:
                activations.append(a)
            h = h + a if (self.residual and i > 0) else a
        logits = self.linears[-1](h).squeeze(-1)
        if activations is not None:
            activations.append(torch.sigmoid(logits).unsqueeze(-1))
        return logits

    def layer_infos(self) -> list[LayerInfo]:
        infos = []
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            if i == last:
                kind, act = "output", "sigmoid"
            elif self.residual and i > 0:
                kind, act = "block", self.activation
            else:
                kind, act = ("input" if self.residual else "hidden"), self.activation
            infos.append(
                LayerInfo(
                    layer=i,
                    name=f"linears.{i}",
                    kind=kind,
                    activation=act,
                    fan_in=linear.in_features,
                    fan_out=linear.out_features,
                    n_params=sum(p.numel() for p in linear.parameters()),
                )
            )
        return infos


def _initialise(model: MLP, init: str) -> None:
    if init == "default":
        return  # PyTorch's own (Kaiming-uniform with a=sqrt(5)): not He init
    for linear in model.linears:
        if init == "xavier":
            nn.init.xavier_uniform_(linear.weight)
        else:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)


def build_model(cfg: RunConfig, n_features: int) -> MLP:
    """The run's model, initialised from torch's global RNG (seed it first)."""
    if cfg.arch == "sigmoid":
        model = MLP(n_features, cfg.depth, cfg.width, "sigmoid", residual=False)
    elif cfg.arch == "relu":
        model = MLP(n_features, cfg.depth, cfg.width, "relu", residual=False)
    else:
        model = MLP(n_features, cfg.depth, cfg.width, cfg.block_activation, residual=True)
    _initialise(model, cfg.init)
    return model
