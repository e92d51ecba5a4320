"""The three models against docs/architecture.md: parameter counts, structure and initialisation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.models import build_model, count_parameters
from cifar_mlflow.models.mixer import MlpMixer
from cifar_mlflow.models.mlp import MLP
from cifar_mlflow.models.resnet import ResNet18
from cifar_mlflow.weights import weights_figure

IMAGE = 32
CLASSES = 10


def configured(**values: object) -> TrainConfig:
    """A config from typed values, model options included."""
    return TrainConfig.from_overrides(values)


def linear_params(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def layer_norm_params(width: int) -> int:
    return 2 * width


def mixer_params(patch: int, dim: int = 256, blocks: int = 4) -> int:
    """The Mixer of docs/architecture.md, counted from the formula, not from the code."""
    tokens = (IMAGE // patch) ** 2
    token_hidden = int(0.5 * dim)
    channel_hidden = 4 * dim
    patch_embed = 3 * patch * patch * dim + dim  # Conv2d(3, D, p, stride=p) with bias
    token_mlp = linear_params(tokens, token_hidden) + linear_params(token_hidden, tokens)
    channel_mlp = linear_params(dim, channel_hidden) + linear_params(channel_hidden, dim)
    block = 2 * layer_norm_params(dim) + token_mlp + channel_mlp
    return patch_embed + blocks * block + layer_norm_params(dim) + linear_params(dim, CLASSES)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def assert_normal_with_std(weight: torch.Tensor, std: float) -> None:
    """Zero-mean normal samples with `std`: the estimate is close and the tails exceed a
    uniform distribution's bound (sqrt(3)·std), which a uniform init never does."""
    values = weight.detach().flatten().double()
    assert values.std().item() == pytest.approx(std, rel=0.05)
    assert abs(values.mean().item()) < 0.05 * std
    assert values.abs().max().item() > 2.0 * std


def assert_uniform_with_bound(weight: torch.Tensor, bound: float) -> None:
    values = weight.detach().flatten().double()
    assert values.abs().max().item() <= bound + 1e-6
    assert values.abs().max().item() > 0.95 * bound
    assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


# --- parameter counts -------------------------------------------------------------------------


def test_default_mlp_has_the_source_parameter_count() -> None:
    widths = [3 * IMAGE * IMAGE, 1024, 512, 64, 64, CLASSES]
    expected = sum(linear_params(a, b) for a, b in itertools.pairwise(widths))
    assert expected == 3_709_194
    assert count_parameters(build_model(TrainConfig(model="mlp"))) == expected


def test_resnet18_has_the_source_parameter_count() -> None:
    assert count_parameters(build_model(TrainConfig(model="resnet18"))) == 11_173_962


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_mixer_parameter_count_follows_the_spec_formula(patch: int) -> None:
    model = build_model(configured(model="mlpmixer", patch_size=patch))
    assert count_parameters(model) == mixer_params(patch)


def test_mixer_parameter_count_follows_width_and_depth() -> None:
    config = configured(model="mlpmixer", patch_size=8, embed_dim=64, num_blocks=2)
    assert count_parameters(build_model(config)) == mixer_params(8, dim=64, blocks=2)


# --- MLP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer"), [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)]
)
def test_mlp_activation_after_each_hidden_layer_none_after_output(
    name: str, layer: type[nn.Module]
) -> None:
    model = build_model(configured(model="mlp", activation=name, hidden_sizes=(32, 16, 8)))
    modules = [m for m in model.modules() if isinstance(m, nn.Linear | layer)]
    kinds = ["linear" if isinstance(m, nn.Linear) else "act" for m in modules]
    assert kinds == ["linear", "act", "linear", "act", "linear", "act", "linear"]
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (3072, 32),
        (32, 16),
        (16, 8),
        (8, CLASSES),
    ]
    # Logits out: no activation after the last layer (sigmoid/relu would bound them).
    torch.manual_seed(0)
    out = model(images(4) * 50)
    assert out.shape == (4, CLASSES)
    assert (out < 0).any()


def test_mlp_init_is_glorot_normal_with_zero_biases() -> None:
    torch.manual_seed(0)
    model = MLP()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # Large layers only: the std estimate of a 64×10 layer is too noisy for a tight check.
    for layer in linears[:3]:
        fan_out, fan_in = layer.weight.shape
        assert_normal_with_std(layer.weight, math.sqrt(2.0 / (fan_in + fan_out)))
    for layer in linears:
        assert torch.count_nonzero(layer.bias) == 0


# --- ResNet18 ----------------------------------------------------------------------------------


def test_resnet18_is_the_cifar_variant() -> None:
    model = ResNet18()
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0]
    assert stem is model.first_layer
    assert (stem.in_channels, stem.out_channels) == (3, 64)
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    # 1 stem + 8 blocks × 2 convs + 3 shortcut convs where the shape changes.
    assert len(convs) == 1 + 16 + 3
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcuts] == [
        (64, 128, (2, 2)),
        (128, 256, (2, 2)),
        (256, 512, (2, 2)),
    ]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, CLASSES)]


def test_resnet18_keeps_full_resolution_after_the_stem_and_outputs_logits() -> None:
    model = ResNet18().eval()
    shapes: list[torch.Size] = []
    model.blocks[0].register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    model.blocks[-1].register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    with torch.no_grad():
        out = model(images(3))
    assert out.shape == (3, CLASSES)
    # No max-pool and a stride-1 stem: 32×32 in the first stage, 4×4 after three halvings.
    assert shapes == [torch.Size([3, 64, 32, 32]), torch.Size([3, 512, 4, 4])]


# --- MLP-Mixer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_mixer_shapes(patch: int) -> None:
    dim = 32
    model = MlpMixer(patch_size=patch, embed_dim=dim, num_blocks=2).eval()
    tokens = (IMAGE // patch) ** 2
    assert model.grid_size == IMAGE // patch
    assert isinstance(model.stem, nn.Conv2d)
    assert model.stem.kernel_size == (patch, patch) and model.stem.stride == (patch, patch)
    block = model.blocks[0]
    assert (block.token_mlp.fc1.in_features, block.token_mlp.fc1.out_features) == (
        tokens,
        dim // 2,
    )
    assert (block.token_mlp.fc2.in_features, block.token_mlp.fc2.out_features) == (
        dim // 2,
        tokens,
    )
    assert (block.channel_mlp.fc1.in_features, block.channel_mlp.fc1.out_features) == (
        dim,
        4 * dim,
    )
    assert model.first_token_mixing_layer is block.token_mlp.fc1
    with torch.no_grad():
        assert model(images(3)).shape == (3, CLASSES)


def test_mixer_layer_norms_use_eps_1e6() -> None:
    norms = [m for m in MlpMixer(num_blocks=3).modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 3 + 1
    assert all(norm.eps == 1e-6 for norm in norms)


def test_mixer_block_is_pre_norm_token_then_channel_mixing() -> None:
    torch.manual_seed(0)
    model = MlpMixer(embed_dim=16, num_blocks=1, patch_size=8).eval()
    block = model.blocks[0]
    # Non-trivial norm affine parameters, so a post-norm block would give other values.
    for norm in (block.norm1, block.norm2):
        nn.init.normal_(norm.weight, 1.0, 0.5)
        nn.init.normal_(norm.bias, 0.0, 0.5)
    x = torch.randn(2, model.grid_size**2, 16)
    with torch.no_grad():
        expected = x + block.token_mlp(block.norm1(x).transpose(1, 2)).transpose(1, 2)
        expected = expected + block.channel_mlp(block.norm2(expected))
        assert torch.allclose(block(x), expected, atol=1e-6)
        # The full model: patch embed → tokens → blocks → norm → mean over tokens → head.
        image = images(2)
        tokens = model.stem(image).flatten(2).transpose(1, 2)
        logits = model.head(model.norm(model.blocks(tokens)).mean(dim=1))
        assert torch.allclose(model(image), logits, atol=1e-6)


def test_mixer_mlp_is_fc_act_dropout_fc_dropout() -> None:
    model = build_model(configured(model="mlpmixer", mixer_activation="relu", drop_rate=0.3))
    mlp = model.blocks[0].channel_mlp
    children = list(mlp.children())
    assert [type(c) for c in children] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.Dropout]
    assert all(c.p == 0.3 for c in children if isinstance(c, nn.Dropout))
    default = build_model(TrainConfig(model="mlpmixer"))
    assert isinstance(default.blocks[0].token_mlp.act, nn.GELU)
    assert all(m.p == 0.0 for m in default.modules() if isinstance(m, nn.Dropout))


def test_mixer_init_xavier_uniform_linears_kaiming_normal_conv() -> None:
    torch.manual_seed(0)
    model = MlpMixer()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        assert_uniform_with_bound(layer.weight, math.sqrt(6.0 / (fan_in + fan_out)))
        assert torch.count_nonzero(layer.bias) == 0
    conv = model.stem
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert_normal_with_std(conv.weight, math.sqrt(2.0 / fan_in))


@pytest.mark.parametrize("patch", [3, 5, 7, 64])
def test_mixer_rejects_a_patch_that_does_not_divide_the_image(patch: int) -> None:
    with pytest.raises(ValueError, match="patch"):
        MlpMixer(patch_size=patch)


def test_build_model_passes_the_architecture_options() -> None:
    mixer = build_model(
        configured(model="mlpmixer", patch_size=8, embed_dim=64, num_blocks=3, drop_rate=0.1)
    )
    assert isinstance(mixer, MlpMixer)
    assert len(mixer.blocks) == 3 and mixer.stem.out_channels == 64 and mixer.grid_size == 4
    assert isinstance(build_model(TrainConfig(model="resnet18")), ResNet18)
    mlp = build_model(configured(model="mlp", activation="tanh", hidden_sizes=(20,)))
    assert isinstance(mlp, MLP) and any(isinstance(m, nn.Tanh) for m in mlp.modules())


# --- weight figures ----------------------------------------------------------------------------


def shown_images(figure: Figure, height: int, width: int) -> list[list[np.ndarray]]:
    """Per panel, the `height`×`width` images tiled into its picture, one-pixel gaps apart."""
    panels = []
    for ax in figure.get_axes():
        for image in ax.get_images():
            mosaic = np.ma.filled(image.get_array().astype(float), np.nan)
            rows = (mosaic.shape[0] + 1) // (height + 1)
            columns = (mosaic.shape[1] + 1) // (width + 1)
            assert mosaic.shape[:2] == (rows * (height + 1) - 1, columns * (width + 1) - 1)
            tiles = [
                mosaic[
                    r * (height + 1) : r * (height + 1) + height,
                    c * (width + 1) : c * (width + 1) + width,
                ]
                for r in range(rows)
                for c in range(columns)
            ]
            # Unused cells are background: masked, or white in RGB (a unit spans 0 to 1).
            panels.append([t for t in tiles if not (np.isnan(t).all() or (t == 1.0).all())])
    return panels


def test_resnet_weights_figure_shows_the_64_kernels() -> None:
    model = ResNet18()
    figure = weights_figure(model, "resnet18")
    assert isinstance(figure, Figure)
    grey, rgb = shown_images(figure, 3, 3)
    assert len(grey) == 64 and grey[0].shape == (3, 3)
    assert len(rgb) == 64 and rgb[0].shape == (3, 3, 3)
    # Grey = the standardised kernels averaged over RGB, in the order of the output channels.
    kernels = model.first_layer.weight.detach()
    standardised = ((kernels - kernels.mean()) / kernels.std()).mean(dim=1).numpy()
    np.testing.assert_allclose(np.stack(grey), standardised, rtol=1e-4, atol=1e-5)


def test_mixer_weights_figure_shows_each_token_unit_on_the_patch_grid() -> None:
    model = MlpMixer(patch_size=4, embed_dim=32, num_blocks=1)
    (units,) = shown_images(weights_figure(model, "mlpmixer"), 8, 8)
    assert len(units) == 16  # token hidden units = 0.5 · D
    expected = model.first_token_mixing_layer.weight.detach().reshape(-1, 8, 8).numpy()
    np.testing.assert_allclose(np.stack(units), expected, rtol=1e-5, atol=1e-6)


def test_mlp_weights_figure_shows_units_as_rgb_images() -> None:
    (units,) = shown_images(weights_figure(MLP(), "mlp"), 32, 32)
    assert len(units) == 64
    for unit in units:
        assert unit.shape == (32, 32, 3) and unit.min() == 0.0 and unit.max() == 1.0


def test_weights_figure_renders_to_png() -> None:
    import io

    buffer = io.BytesIO()
    weights_figure(MlpMixer(embed_dim=16, num_blocks=1), "mlpmixer").savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_weights_figure_is_the_registered_models_own() -> None:
    with pytest.raises(KeyError):
        weights_figure(nn.Linear(2, 2), "vgg")
