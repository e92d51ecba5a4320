"""Pictures of what a model's first layer learned (Figures 5 and 7 of the source report).

Each model module declares its own figure (see `models.registry`); the tiling helpers that
turn weights into one picture are here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow.models.registry import model_spec


def weights_figure(model: nn.Module, model_name: str) -> Figure:
    """The first-layer weights of `model`, as the registered model `model_name` draws them."""
    return model_spec(model_name).weights_figure(model)


def to_unit_range(tensor: torch.Tensor) -> torch.Tensor:
    """Each item min-max scaled to [0, 1], so every unit uses the full colour range."""
    flat = tensor.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (tensor.dim() - 1))
    high = flat.max(dim=1).values.view(-1, *[1] * (tensor.dim() - 1))
    return (tensor - low) / (high - low).clamp_min(1e-12)


def grid_columns(count: int) -> int:
    return math.ceil(math.sqrt(count))


def grid_rows(count: int) -> int:
    return math.ceil(count / grid_columns(count))


def image_grid(target: Figure, images: np.ndarray, cmap: str | None, title: str) -> None:
    """`images` tiled into one picture with a gap between them, on one shared colour scale.

    One image with one Axes renders in a fraction of the time of an Axes per unit, which is
    paid at the end of every run.
    """
    columns, rows = grid_columns(len(images)), grid_rows(len(images))
    height, width = images.shape[1:3]
    # Gaps show the background: white for RGB, masked (NaN) on a colour map.
    tiles = np.full((rows * columns, height + 1, width + 1, *images.shape[3:]), np.nan)
    tiles[: len(images), :height, :width] = images
    mosaic = (
        tiles.reshape(rows, columns, height + 1, width + 1, *images.shape[3:])
        .swapaxes(1, 2)
        .reshape(rows * (height + 1), columns * (width + 1), *images.shape[3:])[:-1, :-1]
    )
    if cmap is None:
        mosaic = np.nan_to_num(mosaic, nan=1.0)
    limit = float(np.nanmax(np.abs(images))) if cmap == "coolwarm" else None
    options = {"vmin": -limit, "vmax": limit} if limit else {}
    ax = target.subplots()
    ax.set_axis_off()
    ax.imshow(mosaic, cmap=cmap, interpolation="nearest", **options)
    target.suptitle(title)
