"""A fourth model, defined outside the package: one small convolution, pooled, then logits.

This one file is all it takes (issue 21): name it in CIFAR_MLFLOW_MODELS and `train`,
`sweep`, `mlflow run`, the weight figure, `register` and the served model know it, and its
option `channels` is a training option like any other.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow import weights
from cifar_mlflow.models.registry import Option, register_model

MAX_CHANNELS = 64


class TinyCNN(nn.Module):
    """3×3 convolution with stride 2 → ReLU → mean over the image → linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def kernels_figure(model: TinyCNN) -> Figure:
    """Each 3×3 kernel as an RGB image."""
    kernels = model.conv.weight.detach().float().cpu()
    images = weights.to_unit_range(kernels).permute(0, 2, 3, 1).numpy()
    figure = Figure(figsize=(4, 4), layout="constrained")
    weights.image_grid(figure, images, cmap=None, title=f"{len(images)} conv kernels (RGB)")
    return figure


@register_model(
    "tinycnn",
    options=(
        Option(
            "channels",
            8,
            "Tiny CNN convolution channels.",
            check=lambda channels: 1 <= channels <= MAX_CHANNELS,
            allowed=f"an integer in [1, {MAX_CHANNELS}]",
        ),
    ),
    run_name_key="ch{channels}",
    weights_figure=kernels_figure,
)
def build_tinycnn(num_classes: int, channels: int) -> TinyCNN:
    return TinyCNN(channels, num_classes)
