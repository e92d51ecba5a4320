"""The multilayer perceptron of the source study: flatten, hidden layers, logits."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow import weights
from cifar_mlflow.models.registry import Option, register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
UNITS_SHOWN = 64


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


def first_units_figure(model: MLP, units: int = UNITS_SHOWN) -> Figure:
    """The first hidden units of the MLP as 32×32 RGB images."""
    unit_weights = model.first_layer.weight.detach().float().cpu()[:units].reshape(-1, 3, 32, 32)
    images = weights.to_unit_range(unit_weights).permute(0, 2, 3, 1).numpy()
    figure = Figure(figsize=(8, 8), layout="constrained")
    weights.image_grid(figure, images, cmap=None, title=f"first {len(images)} hidden units (RGB)")
    return figure


@register_model(
    "mlp",
    options=(
        Option("activation", "relu", "MLP activation", choices=tuple(ACTIVATIONS)),
        Option(
            "hidden_sizes",
            (1024, 512, 64, 64),
            "MLP hidden sizes, comma-separated.",
            check=lambda sizes: len(sizes) >= 1 and min(sizes) >= 1,
            allowed="a comma-separated list of integers >= 1, e.g. 1024,512,64,64",
        ),
    ),
    run_name_key="act{activation}",
    weights_figure=first_units_figure,
)
def build_mlp(num_classes: int, activation: str, hidden_sizes: tuple[int, ...]) -> MLP:
    act_layer = ACTIVATIONS[activation]
    return MLP(hidden_sizes=hidden_sizes, num_classes=num_classes, act_layer=act_layer)
