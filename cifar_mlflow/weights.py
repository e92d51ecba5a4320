"""Pictures of what a model's first layer learned (Figures 5 and 7 of the source report)."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow.models import MLP, MlpMixer, ResNet18

MLP_UNITS_SHOWN = 64


def weights_figure(model: nn.Module) -> Figure:
    """The first-layer weights of any of the three models, one small image per unit."""
    if isinstance(model, ResNet18):
        return resnet_kernels_figure(model)
    if isinstance(model, MlpMixer):
        return token_mixing_figure(model)
    if isinstance(model, MLP):
        return mlp_units_figure(model)
    raise TypeError(f"no weight figure for {type(model).__name__}")


def resnet_kernels_figure(model: ResNet18) -> Figure:
    """Figure 5: the 64 first-conv 3×3 kernels, standardised; RGB averaged to grey, and RGB."""
    kernels = model.first_layer.weight.detach().float().cpu()  # (64, 3, 3, 3)
    kernels = (kernels - kernels.mean()) / kernels.std()
    grey = kernels.mean(dim=1).numpy()
    rgb = _to_unit_range(kernels).permute(0, 2, 3, 1).numpy()
    figure = Figure(figsize=(12, 6), layout="constrained")
    grey_panel, rgb_panel = figure.subfigures(1, 2)
    _image_grid(grey_panel, grey, cmap="gray", title="first-conv kernels (grey)")
    _image_grid(rgb_panel, rgb, cmap=None, title="first-conv kernels (RGB)")
    return figure


def token_mixing_figure(model: MlpMixer) -> Figure:
    """Figure 7: each hidden unit of the first token-mixing fc1 over the patch grid."""
    weights = model.first_token_mixing_layer.weight.detach().float().cpu()
    grid = model.grid_size
    units = weights.reshape(-1, grid, grid).numpy()  # (hidden units, grid, grid)
    height = 12 * _rows(len(units)) / _columns(len(units))
    figure = Figure(figsize=(12, height), layout="constrained")
    _image_grid(figure, units, cmap="coolwarm", title=f"token-mixing units ({grid}×{grid} patches)")
    return figure


def mlp_units_figure(model: MLP, units: int = MLP_UNITS_SHOWN) -> Figure:
    """The first hidden units of the MLP as 32×32 RGB images."""
    weights = model.first_layer.weight.detach().float().cpu()[:units].reshape(-1, 3, 32, 32)
    images = _to_unit_range(weights).permute(0, 2, 3, 1).numpy()
    figure = Figure(figsize=(8, 8), layout="constrained")
    _image_grid(figure, images, cmap=None, title=f"first {len(images)} hidden units (RGB)")
    return figure


def _to_unit_range(tensor: torch.Tensor) -> torch.Tensor:
    """Each item min-max scaled to [0, 1], so every unit uses the full colour range."""
    flat = tensor.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (tensor.dim() - 1))
    high = flat.max(dim=1).values.view(-1, *[1] * (tensor.dim() - 1))
    return (tensor - low) / (high - low).clamp_min(1e-12)


def _columns(count: int) -> int:
    return math.ceil(math.sqrt(count))


def _rows(count: int) -> int:
    return math.ceil(count / _columns(count))


def _image_grid(target: Figure, images: np.ndarray, cmap: str | None, title: str) -> None:
    """`images` tiled into one picture with a gap between them, on one shared colour scale.

    One image with one Axes renders in a fraction of the time of an Axes per unit, which is
    paid at the end of every run.
    """
    columns, rows = _columns(len(images)), _rows(len(images))
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
