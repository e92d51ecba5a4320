"""MLP-Mixer (Tolstikhin et al., 2021) for 32×32 images, pre-norm blocks as in timm."""

from __future__ import annotations

import torch
from torch import nn


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
        img_size: int = 32,
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
