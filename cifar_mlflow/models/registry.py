"""The models this project trains, each declared once by the module that defines it.

A model module builds its network and says everything else the project needs to know about
it, in the habit of timm's `register_model`:

    @register_model(
        "mlp",
        options=(Option("activation", "relu", "MLP activation", choices=("relu", "tanh")),),
        run_name_key="act{activation}",
        weights_figure=first_layer_figure,
    )
    def build_mlp(num_classes: int, activation: str) -> nn.Module: ...

The configuration's validation, the CLI options, MLproject's parameters, run names, the
`unused_params` tag, the weight figure and how the model runs are read from here.

Models defined outside the package are named in the environment variable
`CIFAR_MLFLOW_MODELS` (module names or .py files, separated like PATH), imported at the
first look-up like the package's own, so every command (`train`, `sweep`, `mlflow run`, Ray
workers) sees them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cifar_mlflow.errors import UserError

# The models of the package, imported (with torch) at the first look-up; listed in this order.
BUILTIN_MODULES = (
    "cifar_mlflow.models.mlp",
    "cifar_mlflow.models.resnet",
    "cifar_mlflow.models.mixer",
)
EXTRA_MODELS_VARIABLE = "CIFAR_MLFLOW_MODELS"
OPTION_KINDS = (tuple, bool, int, float, str)  # tuple = a comma-separated list of integers
# On a CPU, 128 images keep the activations of a convolutional model in cache (ResNet18 and the
# Mixer measured 10-25 % slower at 1,000 on a 2-core EPYC).
CACHE_SIZED_EVAL_BATCH = 128


class ModelModuleError(UserError):
    """A module named in CIFAR_MLFLOW_MODELS that cannot be imported; one line."""


@dataclass(frozen=True)
class Option:
    """One option of a model: its name (as the CLI, MLproject and the logged param spell it),
    default (whose type is the option's), help, and what it allows.

    `choices` lists the values of a text option; `check` is the rule of any other option, and
    `allowed` says it in words for the error message.
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    allowed: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def described(self) -> str:
        """The help, with the choices when there are some."""
        if self.choices:
            return f"{self.help}: {' | '.join(self.choices)}."
        return self.help

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, as the rest of a one-line message; None if it is allowed."""
        if self.choices and value not in self.choices:
            return f"must be one of {' | '.join(self.choices)}, got {value!r}"
        if self.check is not None and not self.check(value):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            return f"must be {self.allowed}, got {shown!r}"
        return None


@dataclass(frozen=True)
class Presets:
    """How the model runs fastest on a device; they change the speed, not the result."""

    # Channels-last convolutions: ResNet18 trains ~15 % faster with oneDNN on a CPU, cuDNN
    # feeds tensor cores with them, and the Mixer's stem then emits its tokens without a copy.
    channels_last: bool = False
    cpu_eval_batch_size: int | None = None  # None: the environment's default


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: `build(num_classes, **its options)` and what goes with it."""

    name: str
    build: Callable[..., Any]
    options: tuple[Option, ...]
    run_name_key: str  # formatted with the run's logged params, e.g. "patch{patch_size}"
    weights_figure: Callable[[Any], Any]  # the trained network → a matplotlib Figure
    presets: Presets

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(option.name for option in self.options)


_MODELS: dict[str, ModelSpec] = {}
_extras_loaded = False
_extra_modules: list[ModuleType] = []


def register_model(
    name: str,
    *,
    options: tuple[Option, ...] = (),
    run_name_key: str,
    weights_figure: Callable[[Any], Any],
    presets: Presets = Presets(),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register the builder it decorates as model `name`."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        add(ModelSpec(name, build, tuple(options), run_name_key, weights_figure, presets))
        return build

    return register


def add(spec: ModelSpec) -> None:
    """Register `spec`; a name taken, or an option declared differently by two models, fails."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    declared = {option.name: option for other in _MODELS.values() for option in other.options}
    for option in spec.options:
        if option.kind not in OPTION_KINDS:
            raise ValueError(f"option {option.name!r}: default of unsupported type {option.kind}")
        refused = option.problem(option.default)
        if refused:
            raise ValueError(f"option {option.name!r}: its default {refused}")
        if declared.get(option.name, option) != option:
            raise ValueError(f"option {option.name!r} of {spec.name!r} is declared differently")
    _MODELS[spec.name] = spec


def model_specs() -> tuple[ModelSpec, ...]:
    """Every registered model: the package's in their order, then the others as registered."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    load_extra_models()
    return tuple(sorted(_MODELS.values(), key=_builtin_rank))  # stable: the others keep theirs


def _builtin_rank(spec: ModelSpec) -> int:
    module = spec.build.__module__
    return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)


def model_spec(name: str) -> ModelSpec:
    for spec in model_specs():
        if spec.name == name:
            return spec
    raise KeyError(name)


def model_options() -> tuple[Option, ...]:
    """The options of every model, each once, in the order the models declare them."""
    unique = {option.name: option for spec in model_specs() for option in spec.options}
    return tuple(unique.values())


def load_extra_models() -> None:
    """Import the modules CIFAR_MLFLOW_MODELS names, once per process."""
    global _extras_loaded
    if _extras_loaded:
        return
    _extras_loaded = True
    entries = os.environ.get(EXTRA_MODELS_VARIABLE, "").split(os.pathsep)
    for entry in filter(None, (entry.strip() for entry in entries)):
        try:
            _import(entry)
        except (ImportError, OSError) as error:
            raise ModelModuleError(
                f"{EXTRA_MODELS_VARIABLE}: cannot import {entry!r} ({error}); give module "
                f"names or .py files, separated by {os.pathsep!r}"
            ) from None


def extra_modules() -> tuple[ModuleType, ...]:
    """The modules (or their top-level packages) CIFAR_MLFLOW_MODELS named.

    A logged model carries their code (`tracking.callback.log_model`): where it is served,
    they are not installed.
    """
    load_extra_models()
    return tuple(_extra_modules)


def _import(entry: str) -> None:
    if not entry.endswith(".py"):
        importlib.import_module(entry)
        _extra_modules.append(sys.modules[entry.partition(".")[0]])
        return
    path = Path(entry).expanduser().resolve()
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    # In sys.modules, so that pickles (Ray, the logged model) can name the module.
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    _extra_modules.append(module)
