"""ResNet18, CIFAR variant: 3×3 stem with stride 1 and no max-pool (11,173,962 parameters)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow import weights
from cifar_mlflow.models.registry import CACHE_SIZED_EVAL_BATCH, Presets, register_model


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity or 1×1 conv-BN shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if changes_shape
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class GlobalAveragePool(nn.Module):
    """Mean over height and width: (N, C, H, W) → (N, C).

    Not `AdaptiveAvgPool2d(1)`: its CUDA backward has no deterministic kernel, so
    `--deterministic` would refuse ResNet18 on a GPU; a mean's backward is deterministic.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ResNet18(nn.Module):
    """Stem, four stages of two BasicBlocks (64, 128, 256, 512 channels), pool, linear."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        blocks_per_stage: int = 2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalAveragePool()
        self.head = nn.Linear(channels, num_classes)

    @property
    def first_layer(self) -> nn.Conv2d:
        return self.stem[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))))


def first_kernels_figure(model: ResNet18) -> Figure:
    """Figure 5: the 64 first-conv 3×3 kernels, standardised; RGB averaged to grey, and RGB."""
    kernels = model.first_layer.weight.detach().float().cpu()  # (64, 3, 3, 3)
    kernels = (kernels - kernels.mean()) / kernels.std()
    grey = kernels.mean(dim=1).numpy()
    rgb = weights.to_unit_range(kernels).permute(0, 2, 3, 1).numpy()
    figure = Figure(figsize=(12, 6), layout="constrained")
    grey_panel, rgb_panel = figure.subfigures(1, 2)
    weights.image_grid(grey_panel, grey, cmap="gray", title="first-conv kernels (grey)")
    weights.image_grid(rgb_panel, rgb, cmap=None, title="first-conv kernels (RGB)")
    return figure


@register_model(
    "resnet18",
    run_name_key="lr{lr}",
    weights_figure=first_kernels_figure,
    presets=Presets(channels_last=True, cpu_eval_batch_size=CACHE_SIZED_EVAL_BATCH),
)
def build_resnet18(num_classes: int) -> ResNet18:
    return ResNet18(num_classes=num_classes)
