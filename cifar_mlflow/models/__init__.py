"""The three models of the study, built from a `TrainConfig`."""

from __future__ import annotations

from torch import nn

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.models.mixer import MlpMixer
from cifar_mlflow.models.mlp import MLP
from cifar_mlflow.models.resnet import ResNet18

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


def build_model(config: TrainConfig, num_classes: int = 10) -> nn.Module:
    """The model `config.model` names, with the config's architecture options."""
    if config.model == "mlp":
        return MLP(
            hidden_sizes=config.hidden_sizes,
            num_classes=num_classes,
            act_layer=ACTIVATIONS[config.activation],
        )
    if config.model == "resnet18":
        return ResNet18(num_classes=num_classes)
    return MlpMixer(
        num_classes=num_classes,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        num_blocks=config.num_blocks,
        act_layer=ACTIVATIONS[config.mixer_activation],
        drop_rate=config.drop_rate,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MLP", "MlpMixer", "ResNet18", "build_model", "count_parameters"]
