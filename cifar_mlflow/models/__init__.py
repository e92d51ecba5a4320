"""The models of the study, each declared by its own module (see `registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cifar_mlflow.models.registry import model_spec

if TYPE_CHECKING:
    from torch import nn

    from cifar_mlflow.config import TrainConfig


def build_model(config: TrainConfig, num_classes: int = 10) -> nn.Module:
    """The model `config.model` names, built with its own options."""
    spec = model_spec(config.model)
    return spec.build(num_classes, **{name: config.options[name] for name in spec.option_names})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
