"""TrainConfig: parsing of text overrides, validation, unused fields and the trial key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from cifar_mlflow.config import ConfigError, Setting, TrainConfig, settings
from cifar_mlflow.models.registry import model_specs

REPO = Path(__file__).resolve().parents[1]
FIELDS = [setting.name for setting in settings()]


def configured(**values: object) -> TrainConfig:
    """A config from typed values, model options included."""
    return TrainConfig.from_overrides(values)


def test_text_values_are_parsed_per_field() -> None:
    config = TrainConfig.from_overrides(
        {
            "model": "mlpmixer",
            "lr": "1e-3",
            "epochs": "2",
            "train_size": "256",
            "hidden_sizes": "1,2",
            "drop_rate": "0.4",
            "patch_size": " 8 ",
            "weight_decay": "5e-3",
        }
    )
    assert config.model == "mlpmixer"
    assert config.lr == pytest.approx(0.001) and isinstance(config.lr, float)
    assert config.epochs == 2 and isinstance(config.epochs, int)
    assert config.train_size == 256
    assert config.options["hidden_sizes"] == (1, 2)
    assert config.options["drop_rate"] == pytest.approx(0.4)
    assert config.options["patch_size"] == 8
    assert config.weight_decay == pytest.approx(5e-3)
    # Everything not overridden keeps its default.
    assert config.batch_size == TrainConfig().batch_size
    assert config.seed == TrainConfig().seed


@pytest.mark.parametrize("text", ["1024,512", "1024, 512", "[1024,512]", "(1024,512)"])
def test_hidden_sizes_spellings(text: str) -> None:
    assert TrainConfig.from_overrides({"hidden_sizes": text}).options["hidden_sizes"] == (1024, 512)


def test_integer_written_as_float_text_is_accepted_but_fractions_are_not() -> None:
    # `mlflow run` may hand over "2.0"; "2.5" epochs is a mistake.
    assert TrainConfig.from_overrides({"epochs": "2.0"}).epochs == 2
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_overrides({"epochs": "2.5"})


def test_from_overrides_applies_to_a_base() -> None:
    base = TrainConfig(model="resnet18", lr=0.01)
    config = TrainConfig.from_overrides({"epochs": "3"}, base=base)
    assert (config.model, config.lr, config.epochs) == ("resnet18", 0.01, 3)


def test_defaults_follow_the_spec() -> None:
    config = TrainConfig()
    assert config.dataset == "cifar10"  # synthetic is never the default
    assert (config.batch_size, config.lr, config.optimizer) == (128, 1e-3, "adamw")
    assert (config.weight_decay, config.momentum, config.epochs, config.seed) == (
        5e-4,
        0.9,
        15,
        42,
    )
    assert config.options["hidden_sizes"] == (1024, 512, 64, 64)
    mixer = ("embed_dim", "num_blocks", "patch_size", "drop_rate")
    assert [config.options[name] for name in mixer] == [256, 4, 4, 0.0]
    assert config.device == "auto"


@pytest.mark.parametrize(
    ("overrides", "option", "allowed"),
    [
        ({"model": "vgg"}, "model", "mlp"),
        ({"optimizer": "rmsprop"}, "optimizer", "adamw"),
        ({"activation": "gelu"}, "activation", "sigmoid"),
        ({"mixer_activation": "tanh"}, "mixer_activation", "gelu"),
        ({"patch_size": "5"}, "patch_size", "divisor of 32"),
        ({"patch_size": "0"}, "patch_size", "divisor of 32"),
        ({"lr": "0"}, "lr", "> 0"),
        ({"lr": "-1e-3"}, "lr", "> 0"),
        ({"epochs": "0"}, "epochs", ">= 1"),
        ({"batch_size": "0"}, "batch_size", ">= 1"),
        ({"drop_rate": "1.0"}, "drop_rate", "[0, 1)"),
        ({"drop_rate": "-0.1"}, "drop_rate", "[0, 1)"),
        ({"hidden_sizes": "1024,x"}, "hidden_sizes", "comma-separated"),
        ({"hidden_sizes": "1024,0"}, "hidden_sizes", "comma-separated"),
        ({"lr": "fast"}, "lr", "number"),
        ({"epochs": "many"}, "epochs", "integer"),
        ({"learning_rate": "0.1"}, "learning_rate", "lr"),
    ],
)
def test_invalid_values_name_the_option_and_what_is_allowed(
    overrides: dict[str, str], option: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_overrides(overrides)
    message = str(caught.value)
    assert option in message
    assert allowed in message
    assert "\n" not in message


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        TrainConfig(model="mlpmixer", options={"patch_size": 3})
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0.0)


def test_params_are_every_field_flat_and_parse_back() -> None:
    config = configured(model="mlp", hidden_sizes=(32, 16), lr=0.01, seed=7)
    params = config.to_params()
    assert list(params) == FIELDS
    assert all(isinstance(value, str) for value in params.values())
    assert params["hidden_sizes"] == "32,16"
    # Params are the configuration: reading them back gives the same config.
    assert TrainConfig.from_overrides(params) == config


def test_unused_fields_depend_on_model_and_optimizer() -> None:
    mlp = TrainConfig(model="mlp", optimizer="adamw")
    assert {"patch_size", "embed_dim", "num_blocks", "drop_rate", "mixer_activation"} <= set(
        mlp.unused_fields()
    )
    assert "activation" not in mlp.unused_fields()
    assert "momentum" not in mlp.unused_fields()  # beta1 of AdamW

    resnet = TrainConfig(model="resnet18", optimizer="sgd")
    assert {"activation", "hidden_sizes", "patch_size", "momentum"} <= set(resnet.unused_fields())

    mixer = TrainConfig(model="mlpmixer", optimizer="momentum")
    assert {"activation", "hidden_sizes"} <= set(mixer.unused_fields())
    assert not {"patch_size", "embed_dim", "momentum"} & set(mixer.unused_fields())


def test_ignored_overrides_are_only_unused_fields_moved_from_their_default() -> None:
    config = configured(model="resnet18", activation="tanh", patch_size=8)
    assert set(config.ignored_overrides()) == {"activation", "patch_size"}
    assert TrainConfig(model="resnet18").ignored_overrides() == ()


def test_trial_key_is_stable() -> None:
    config = TrainConfig(model="resnet18", lr=0.01)
    key = config.trial_key()
    assert key == TrainConfig(model="resnet18", lr=0.01).trial_key()
    assert key == TrainConfig.from_overrides({"model": "resnet18", "lr": "1e-2"}).trial_key()
    assert re.fullmatch("[0-9a-f]{16}", key)


def test_trial_key_ignores_unused_options_and_data_dir() -> None:
    base = TrainConfig(model="resnet18", optimizer="sgd")
    same = [
        TrainConfig.from_overrides({"activation": "tanh"}, base),
        TrainConfig.from_overrides({"hidden_sizes": (8,)}, base),
        TrainConfig.from_overrides({"patch_size": 16, "embed_dim": 64, "drop_rate": 0.3}, base),
        dataclasses.replace(base, momentum=0.5),  # unused by plain SGD
        dataclasses.replace(base, data_dir="/somewhere/else"),
    ]
    assert {config.trial_key() for config in same} == {base.trial_key()}


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 0.01},
        {"seed": 1},
        {"epochs": 3},
        {"batch_size": 64},
        {"weight_decay": 0.0},
        {"optimizer": "adam"},
        {"dataset": "synthetic"},
        {"train_size": 100},
        {"activation": "tanh"},
        {"hidden_sizes": (8,)},
    ],
)
def test_trial_key_changes_with_what_changes_training(change: dict) -> None:
    base = TrainConfig(model="mlp")
    assert TrainConfig.from_overrides(change, base).trial_key() != base.trial_key()


def test_trial_key_of_mixer_follows_the_patch_size() -> None:
    assert (
        configured(model="mlpmixer", patch_size=2).trial_key()
        != configured(model="mlpmixer", patch_size=4).trial_key()
    )


def test_run_name_is_readable() -> None:
    assert TrainConfig(model="resnet18", lr=0.001, seed=42).run_name() == "resnet18-lr0.001-seed42"
    assert configured(model="mlpmixer", patch_size=8, seed=1).run_name() == (
        "mlpmixer-patch8-seed1"
    )
    assert configured(model="mlp", activation="tanh").run_name() == "mlp-acttanh-seed42"


def builtin_settings() -> list[Setting]:
    """The training options with the models of the package only (not CIFAR_MLFLOW_MODELS')."""
    extra = {
        option.name
        for spec in model_specs()
        if not spec.build.__module__.startswith("cifar_mlflow.")
        for option in spec.options
    }
    return [setting for setting in settings() if setting.name not in extra]


def test_mlproject_train_parameters_are_derived_from_the_registry() -> None:
    """MLproject is static YAML: this keeps its `train` entry what the registry says.

    Every training option (the config's fields and each built-in model's options) is a
    parameter, in order, with the default the registry declares, and reaches the command.
    """
    project = yaml.safe_load((REPO / "MLproject").read_text())
    entry = project["entry_points"]["train"]
    parameters = entry["parameters"]
    expected = builtin_settings()
    defaults = TrainConfig().to_params()
    assert {name: spec["default"] for name, spec in parameters.items()} == {
        setting.name: defaults[setting.name] for setting in expected
    }, "MLproject's train parameters must be the training options, with their defaults"
    assert list(parameters) == [setting.name for setting in expected]
    assert TrainConfig.from_overrides({k: str(v["default"]) for k, v in parameters.items()}) == (
        TrainConfig()
    )
    # Every parameter reaches the command line, and nothing else.
    command = " ".join(entry["command"].split())
    options = " ".join(f"--{s.name.replace('_', '-')} {{{s.name}}}" for s in expected)
    assert command == f"python -m cifar_mlflow train {options}"
