"""The one validated training configuration, built at the edge from defaults and overrides.

Everything inside the package trusts a `TrainConfig`: the CLI, the MLproject entry points and
the study files all go through `TrainConfig.from_overrides`, which parses text values (as
`mlflow run` and click deliver them) and fails with a one-line `ConfigError` that names the
option and what is allowed. The options of the models (`hidden_sizes`, `patch_size`, ...) are
those the registered models declare (`models.registry`); they live in `options` but are
training options like the fields: `settings()` lists both, in the order of the CLI and params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cifar_mlflow.errors import UserError
from cifar_mlflow.models.registry import Option, model_options, model_spec, model_specs

DATASETS = ("cifar10", "synthetic")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
# How the same computation runs, not what it computes: a compiled trial reuses an eager one.
HOW_IT_RUNS = ("deterministic", "compile")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# The field that holds the registered models' options; each is a training option of its own.
MODEL_OPTIONS = "options"


class ConfigError(UserError):
    """A user-facing configuration mistake; its message is one line."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Field order, with `options` expanded in its place (`settings()`), is
    the order of the CLI options and the logged params."""

    model: str = field(default="mlp", metadata=_help("Model: {models}."))
    dataset: str = field(
        default="cifar10",
        metadata=_help("cifar10, or synthetic (generated offline stand-in in the same layout)."),
    )
    data_dir: str = field(default="./data", metadata=_help("Folder holding cifar-10-batches-py/."))
    train_size: int = field(
        default=0, metadata=_help("Use only the first N images of the train split (0 = all).")
    )
    # Every registered model's options by name (see `models.registry`); unset ones default.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    optimizer: str = field(default="adamw", metadata=_help(f"{' | '.join(OPTIMIZERS)}."))
    lr: float = field(default=1e-3, metadata=_help("Learning rate, > 0."))
    momentum: float = field(
        default=0.9,
        metadata=_help("Momentum for momentum; beta1 for adam/adamw; unused by sgd. In [0, 1)."),
    )
    weight_decay: float = field(default=5e-4, metadata=_help("Weight decay, >= 0."))
    batch_size: int = field(default=128, metadata=_help("Training batch size, >= 1."))
    epochs: int = field(default=15, metadata=_help("Number of epochs, >= 1."))
    seed: int = field(default=42, metadata=_help("Seed of the split, initialisation and batches."))
    device: str = field(default="auto", metadata=_help(f"{' | '.join(DEVICES)}."))
    precision: str = field(
        default="auto",
        metadata=_help(
            "fp32, or bf16 autocast; auto = bf16 where the device computes it natively "
            "(CUDA, CPUs with AVX512-BF16 or AMX), else fp32."
        ),
    )
    checkpoint_dir: str = field(
        default="./checkpoints",
        metadata=_help("Folder of the per-epoch checkpoints (RUN_ID/last.pt), for --resume."),
    )
    deterministic: bool = field(
        default=False,
        metadata=_help(
            "Deterministic kernels, cuDNN autotuning off: on CUDA a resumed run then repeats "
            "an uninterrupted one exactly (slower). The CPU is deterministic either way."
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_help(
            "torch.compile the model (needs a C compiler); on CUDA with CUDA graphs "
            "(mode reduce-overhead). Compiling is paid in the first epoch; slower on a CPU."
        ),
    )

    def __post_init__(self) -> None:
        _require_choice("model", self.model, model_names())
        object.__setattr__(self, MODEL_OPTIONS, _checked_options(self.options))
        _require_choice("dataset", self.dataset, DATASETS)
        _require_choice("optimizer", self.optimizer, OPTIMIZERS)
        _require_choice("device", self.device, DEVICES)
        _require_choice("precision", self.precision, PRECISIONS)
        for folder in ("data_dir", "checkpoint_dir"):
            if not getattr(self, folder):
                raise ConfigError(f"{folder} must be a folder path, got an empty value")
        _require(self.train_size >= 0, "train_size", self.train_size, "an integer >= 0")
        _require(self.lr > 0, "lr", self.lr, "a number > 0")
        _require(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "a number in [0, 1)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")

    @classmethod
    def from_overrides(
        cls, overrides: Mapping[str, Any], base: TrainConfig | None = None
    ) -> TrainConfig:
        """Defaults (or `base`) with `overrides` applied; text values are parsed per field."""
        types = field_types()
        unknown = sorted(set(overrides) - set(types))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; allowed: {', '.join(types)}")
        parsed = {name: _parse(name, value, types[name]) for name, value in overrides.items()}
        base = base or cls()
        options = {name: parsed.pop(name) for name in list(parsed) if name in base.options}
        return dataclasses.replace(base, **parsed, options={**base.options, **options})

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TrainConfig:
        """The configuration a run logged; params that are not options (a sweep's) are skipped."""
        names = field_types()
        return cls.from_overrides({k: v for k, v in params.items() if k in names})

    def value(self, name: str) -> Any:
        """The value of training option `name`, a field or a model's option."""
        return self.options[name] if name in self.options else getattr(self, name)

    def to_params(self) -> dict[str, str]:
        """Flat string params, as logged to MLflow."""
        return {setting.name: _format(self.value(setting.name)) for setting in settings()}

    def unused_fields(self) -> tuple[str, ...]:
        """Options that have no effect for this model and optimiser."""
        unused = set(self.options) - set(model_spec(self.model).option_names)
        if self.optimizer == "sgd":
            unused.add("momentum")
        return tuple(setting.name for setting in settings() if setting.name in unused)

    def ignored_overrides(self) -> tuple[str, ...]:
        """Unused options set away from their default: asked for, but without effect."""
        default = TrainConfig()
        return tuple(
            name for name in self.unused_fields() if self.value(name) != default.value(name)
        )

    def trial_key(self) -> str:
        """Stable hash of everything that changes the result of training.

        Options without effect, the locations of folders and how the kernels run are left out,
        so the same trial has the same key on every machine, whatever the unused options say
        and whichever other models are registered.
        """
        return self._key(skipped=())

    def seed_group(self) -> str:
        """The trial key without the seed: equal for the runs of a setting that differ only by
        their seed, which the statistics of a setting are taken over (docs/statistics.md)."""
        return self._key(skipped=("seed",))

    def _key(self, skipped: tuple[str, ...]) -> str:
        left_out = {*skipped, *self.unused_fields(), "data_dir", "checkpoint_dir", *HOW_IT_RUNS}
        relevant = {k: v for k, v in self.to_params().items() if k not in left_out}
        text = json.dumps(relevant, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run_name(self) -> str:
        """Readable run name: the model, what distinguishes it (its run-name key), the seed."""
        setting = model_spec(self.model).run_name_key.format(**self.to_params())
        return f"{self.model}-{setting}-seed{self.seed}"


@dataclass(frozen=True)
class Setting:
    """One training option as the CLI, MLproject and the logged params spell it."""

    name: str
    kind: type  # tuple = a comma-separated list of integers
    default: Any
    help: str


def model_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in model_specs())


def settings() -> tuple[Setting, ...]:
    """Every training option in order: the fields, with each registered model's options in
    the place of `options`."""
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    found: list[Setting] = []
    for f in fields(TrainConfig):
        if f.name == MODEL_OPTIONS:
            found += [_setting(option) for option in model_options()]
        else:
            text = f.metadata["help"].format(models=" | ".join(model_names()))
            found.append(Setting(f.name, kinds[str(f.type)], f.default, text))
    return tuple(found)


def field_types() -> dict[str, type]:
    """Each training option's element type, for parsing text overrides."""
    return {setting.name: setting.kind for setting in settings()}


def _setting(option: Option) -> Setting:
    return Setting(option.name, option.kind, option.default, option.described)


def _checked_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every registered model's options: `given`, else the default; each value validated."""
    declared = model_options()
    clash = sorted({option.name for option in declared} & {f.name for f in fields(TrainConfig)})
    if clash:
        raise ValueError(f"a model declares option {clash[0]!r}, a field of every training run")
    unknown = sorted(set(given) - {option.name for option in declared})
    if unknown:
        raise ConfigError(f"unknown model option {unknown[0]!r}")
    values = {option.name: given.get(option.name, option.default) for option in declared}
    for option in declared:
        problem = option.problem(values[option.name])
        if problem:
            raise ConfigError(f"{option.name} {problem}")
    return values


def _parse(name: str, value: Any, kind: type) -> Any:
    if kind is tuple and isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    # Study files give typed YAML values; they go through the same parsing as text.
    text = str(value).strip()
    try:
        if kind is tuple:
            return tuple(int(part) for part in text.replace(" ", "").strip("[]()").split(","))
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if kind is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
        if kind is bool:
            return BOOLEANS[text.lower()]
    except (ValueError, KeyError):
        allowed = {
            tuple: "a comma-separated list of integers, e.g. 1024,512,64,64",
            int: "an integer",
            float: "a finite number",
            bool: "true or false",
        }[kind]
        raise ConfigError(f"{name} must be {allowed}, got {value!r}") from None
    return text


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()  # as MLproject and the CLI spell it
    return str(value)


def _require_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {' | '.join(allowed)}, got {value!r}")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")
