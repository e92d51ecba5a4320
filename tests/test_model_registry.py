"""The model registry: what a model declares once is what config, CLI and environment use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cifar_mlflow import environment
from cifar_mlflow.config import ConfigError, TrainConfig, model_names, settings
from cifar_mlflow.models import build_model, registry
from cifar_mlflow.models.registry import ModelSpec, Option, Presets

REPO = Path(__file__).resolve().parents[1]
# `trial_key()` of the default mlp, resnet18 and mlpmixer, as runs before the registry logged it.
KEYS_BEFORE_THE_REGISTRY = ["516989f00dcbe11a", "47d5a0d3cf0fac4a", "4bff32afc843e2a4"]
WIDTH = Option("width", 4, "Toy width.", check=lambda width: width >= 1, allowed="an integer >= 1")


def toy_spec(name: str = "toy", options: tuple[Option, ...] = (WIDTH,), **changes) -> ModelSpec:
    values = {
        "name": name,
        "build": lambda num_classes, width: nn.Sequential(nn.Flatten(), nn.Linear(3072, width)),
        "options": options,
        "run_name_key": "w{width}",
        "weights_figure": lambda model: None,
        "presets": Presets(channels_last=True, cpu_eval_batch_size=32),
    }
    return ModelSpec(**{**values, **changes})


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """`toy` registered for this test only."""
    spec = toy_spec()
    monkeypatch.setitem(registry._MODELS, spec.name, spec)
    return spec


def test_the_built_in_models_in_their_order() -> None:
    assert model_names()[:3] == ("mlp", "resnet18", "mlpmixer")


def test_a_registered_model_is_a_choice_with_its_options_validated_and_built(toy) -> None:
    assert "toy" in model_names()
    assert "width" in [setting.name for setting in settings()]
    config = TrainConfig.from_overrides({"model": "toy", "width": "7"})
    assert config.options["width"] == 7
    assert config.to_params()["width"] == "7"
    assert config.run_name() == "toy-w7-seed42"
    assert build_model(config)[1].out_features == 7
    assert "width" not in config.unused_fields()
    assert {"activation", "patch_size"} <= set(config.unused_fields())
    with pytest.raises(ConfigError, match=r"^width must be an integer >= 1, got 0$"):
        TrainConfig.from_overrides({"model": "toy", "width": "0"})


def test_its_presets_choose_how_it_runs(toy) -> None:
    env = environment.environment_for(TrainConfig(model="toy", device="cpu"))
    assert env.memory_format == torch.channels_last and env.eval_batch_size == 32
    plain = environment.environment_for(TrainConfig(model="mlp", device="cpu"))
    assert plain.memory_format == torch.contiguous_format
    assert plain.eval_batch_size == environment.EVAL_BATCH_SIZE


def test_another_registered_model_leaves_trial_keys_and_run_names_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configs = [TrainConfig(model=name) for name in ("mlp", "resnet18", "mlpmixer")]
    before = [(config.trial_key(), config.run_name()) for config in configs]
    monkeypatch.setitem(registry._MODELS, "toy", toy_spec())
    after = [TrainConfig(model=config.model) for config in configs]
    assert [(config.trial_key(), config.run_name()) for config in after] == before
    # The keys of existing runs, as logged before the registry existed.
    assert [key for key, _ in before] == [
        "516989f00dcbe11a",
        "47d5a0d3cf0fac4a",
        "4bff32afc843e2a4",
    ]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (toy_spec("mlp"), "registered twice"),
        (toy_spec(options=(Option("patch_size", 8, "Other."),)), "declared differently"),
        (toy_spec(options=(Option("width", 0, "Toy.", check=bool, allowed="> 0"),)), "default"),
        (toy_spec(options=(Option("width", [1], "Toy."),)), "unsupported type"),
        (toy_spec(options=(Option("act", "x", "Toy.", choices=("a", "b")),)), "default"),
    ],
)
def test_a_model_that_contradicts_the_registry_is_refused(spec: ModelSpec, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        registry.add(spec)
    assert registry._MODELS.get(spec.name) is not spec


def test_an_option_named_like_a_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = toy_spec(options=(Option("lr", 0.1, "Toy."),))
    monkeypatch.setitem(registry._MODELS, "toy", spec)
    with pytest.raises(ValueError, match="'lr'"):
        TrainConfig()


def test_an_extra_module_that_cannot_be_imported_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(registry, "_extras_loaded", False)
    monkeypatch.setenv(registry.EXTRA_MODELS_VARIABLE, str(tmp_path / "missing.py"))
    with pytest.raises(registry.ModelModuleError) as caught:
        registry.model_specs()
    assert "missing.py" in str(caught.value) and "\n" not in str(caught.value)


def test_the_command_line_says_so_in_one_line() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", "train", "--help"],
        env={"PATH": "", registry.EXTRA_MODELS_VARIABLE: "no_such_models_module"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.startswith("Error: CIFAR_MLFLOW_MODELS: cannot import")
    assert process.stderr.count("\n") == 1


@pytest.mark.parametrize("entry", ["tests.tiny_cnn_model", "tests/tiny_cnn_model.py"])
def test_an_extra_module_by_name_or_file_joins_the_cli(entry: str) -> None:
    """The CLI's options are the registry's: the extra model and its option are in `--help`."""
    process = subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", "train", "--help"],
        cwd=REPO,
        env={"PATH": "", registry.EXTRA_MODELS_VARIABLE: entry},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    help_text = " ".join(process.stdout.split())
    assert "Model: mlp | resnet18 | mlpmixer | tinycnn." in help_text
    assert "--channels VALUE Tiny CNN convolution channels. [default: 8]" in help_text
