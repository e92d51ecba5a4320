"""The optimisers a configuration names: SGD, SGD with momentum, Adam, AdamW."""

from __future__ import annotations

import torch
from torch import nn

from cifar_mlflow.config import TrainConfig


def build_optimizer(
    config: TrainConfig, model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` names; weight decay is honoured by all four.

    `momentum` is SGD's momentum for `momentum` and Adam's beta1 for `adam`/`adamw`.
    """
    params = model.parameters()
    # One fused kernel per step instead of a few per parameter: on a CPU, AdamW's step over the
    # MLP's 3.7 M parameters takes 2.3 ms fused against 8 ms with the default `foreach`.
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if config.optimizer in ("sgd", "momentum"):
        momentum = config.momentum if config.optimizer == "momentum" else 0.0
        return torch.optim.SGD(
            params, lr=config.lr, momentum=momentum, weight_decay=config.weight_decay, **fused
        )
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(
        params,
        lr=config.lr,
        betas=(config.momentum, 0.999),
        weight_decay=config.weight_decay,
        **fused,
    )
