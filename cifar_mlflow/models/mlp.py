"""The multilayer perceptron of the source study: flatten, hidden layers, logits."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten 3×32×32 → hidden layers with an activation after each → `num_classes` logits."""

    def __init__(
        self,
        in_features: int = 3 * 32 * 32,
        hidden_sizes: Sequence[int] = (1024, 512, 64, 64),
        num_classes: int = 10,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden_sizes]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), act_layer()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)
        self.apply(_init_weights)

    @property
    def first_layer(self) -> nn.Linear:
        return self.layers[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _init_weights(module: nn.Module) -> None:
    # Glorot-normal with zero bias, as in the source study's Keras-style MLP.
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)
