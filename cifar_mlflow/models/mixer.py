"""MLP-Mixer (Tolstikhin et al., 2021) for 32×32 images, pre-norm blocks as in timm."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow import weights
from cifar_mlflow.models.registry import CACHE_SIZED_EVAL_BATCH, Option, Presets, register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}
IMAGE_SIZE = 32


class Mlp(nn.Module):
    """fc1 → activation → dropout → fc2 → dropout."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MixerBlock(nn.Module):
    """Token mixing across patches, then channel mixing across features; both residual."""

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        token_mlp_ratio: float = 0.5,
        channel_mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mlp = Mlp(num_tokens, int(token_mlp_ratio * dim), act_layer, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mlp = Mlp(dim, int(channel_mlp_ratio * dim), act_layer, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MlpMixer(nn.Module):
    """Patch embedding (conv, kernel = stride = patch), N mixer blocks, norm, mean over tokens."""

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = IMAGE_SIZE,
        in_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 256,
        num_blocks: int = 4,
        act_layer: type[nn.Module] = nn.GELU,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the image size {img_size}")
        self.grid_size = img_size // patch_size
        num_tokens = self.grid_size**2
        self.stem = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.blocks = nn.Sequential(
            *(
                MixerBlock(embed_dim, num_tokens, act_layer=act_layer, drop=drop_rate)
                for _ in range(num_blocks)
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)

    @property
    def first_token_mixing_layer(self) -> nn.Linear:
        return self.blocks[0].token_mlp.fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (batch, tokens, embed_dim)
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens.mean(dim=1))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
        nn.init.zeros_(module.bias)


def token_mixing_figure(model: MlpMixer) -> Figure:
    """Figure 7: each hidden unit of the first token-mixing fc1 over the patch grid."""
    unit_weights = model.first_token_mixing_layer.weight.detach().float().cpu()
    grid = model.grid_size
    units = unit_weights.reshape(-1, grid, grid).numpy()  # (hidden units, grid, grid)
    height = 12 * weights.grid_rows(len(units)) / weights.grid_columns(len(units))
    figure = Figure(figsize=(12, height), layout="constrained")
    title = f"token-mixing units ({grid}×{grid} patches)"
    weights.image_grid(figure, units, cmap="coolwarm", title=title)
    return figure


POSITIVE = {"check": lambda value: value >= 1, "allowed": "an integer >= 1"}


@register_model(
    "mlpmixer",
    options=(
        Option("mixer_activation", "gelu", "MLP-Mixer activation", choices=tuple(ACTIVATIONS)),
        Option(
            "patch_size",
            4,
            "MLP-Mixer patch size; must divide 32.",
            check=lambda size: size >= 1 and IMAGE_SIZE % size == 0,
            allowed="a divisor of 32 (1, 2, 4, 8, 16, 32)",
        ),
        Option("embed_dim", 256, "MLP-Mixer embedding width D.", **POSITIVE),
        Option("num_blocks", 4, "MLP-Mixer number of blocks N.", **POSITIVE),
        Option(
            "drop_rate",
            0.0,
            "MLP-Mixer dropout, in [0, 1).",
            check=lambda rate: 0.0 <= rate < 1.0,
            allowed="a number in [0, 1)",
        ),
    ),
    run_name_key="patch{patch_size}",
    weights_figure=token_mixing_figure,
    presets=Presets(channels_last=True, cpu_eval_batch_size=CACHE_SIZED_EVAL_BATCH),
)
def build_mlpmixer(
    num_classes: int,
    mixer_activation: str,
    patch_size: int,
    embed_dim: int,
    num_blocks: int,
    drop_rate: float,
) -> MlpMixer:
    return MlpMixer(
        num_classes=num_classes,
        patch_size=patch_size,
        embed_dim=embed_dim,
        num_blocks=num_blocks,
        act_layer=ACTIVATIONS[mixer_activation],
        drop_rate=drop_rate,
    )
