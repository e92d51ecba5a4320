"""A study's `search`: one distribution per training option, and how the search runs (issue 14).

    search:
      lr: {log_uniform: [1.0e-5, 1.0e-1]}
      batch_size: {choice: [64, 128, 256]}
      drop_rate: {uniform: [0.0, 0.5]}
      num_blocks: {int: [2, 8]}
    trials: 20
    sampler: tpe          # tpe | random
    pruner: median        # median | hyperband | none
    min_epochs: 3         # no trial is stopped before this epoch

Every value a distribution can produce is validated like the option it sets, against the
study's fixed settings, when the file is loaded: a sample the option would refuse fails
before any run exists. No Optuna here: `search.state` turns a `Dimension` into one of
Optuna's distributions, so loading a study stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifar_mlflow.config import ConfigError, TrainConfig, field_types
from cifar_mlflow.errors import UserError

KINDS = ("log_uniform", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SEARCH_KEYS = ("trials", "sampler", "pruner", "min_epochs")
DEFAULTS = {"sampler": "tpe", "pruner": "median", "min_epochs": 1}
# What and where a trial trains on, not how: the same for every trial of a search.
UNSEARCHABLE = ("dataset", "data_dir", "checkpoint_dir", "device")
# An `int` range this small has each of its values validated (patch_size: only divisors of
# 32); a wider one has its bounds validated, as every integer option's rule is a range.
MAX_CHECKED_INTS = 1000


class SearchError(UserError):
    """A `search` section that cannot be run; the message is one line."""


@dataclass(frozen=True)
class Dimension:
    """One searched option: a range (`log_uniform`, `uniform`, `int`) or a list (`choice`).

    Choices are kept as the text the option is logged as (`128`, `64,64`), so that a trial's
    logged param is the very value the sampler drew.
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def value_of(self, param: str) -> float | int | str:
        """A logged param of this option back as the value the sampler drew."""
        if self.kind == "choice":
            return param
        return int(param) if self.kind == "int" else float(param)


@dataclass(frozen=True)
class SearchSpec:
    dimensions: tuple[Dimension, ...]
    trials: int
    sampler: str
    pruner: str
    min_epochs: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dimension.name for dimension in self.dimensions)

    def check_epochs(self, epochs: int) -> None:
        if self.min_epochs > epochs:
            raise SearchError(
                f"min_epochs must be at most epochs ({epochs}), got {self.min_epochs}"
            )

    def key(self, base: TrainConfig) -> str:
        """What identifies the search across sweeps: its space, its rules and the fixed trial.

        `trials` is left out: asking for more trials continues the same search.
        """
        content = {
            "dimensions": [vars(dimension) for dimension in self.dimensions],
            "rules": [self.sampler, self.pruner, self.min_epochs],
            "base": base.trial_key(),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def parse_search(content: Mapping[str, Any], base: TrainConfig) -> SearchSpec:
    """The `search` section and its keys of a study file, validated against `base`."""
    space = content.get("search")
    if not isinstance(space, dict) or not space:
        raise SearchError("`search` must map training options to distributions")
    dimensions = tuple(_dimension(name, spec, base) for name, spec in space.items())
    trials = content.get("trials")
    min_epochs = content.get("min_epochs", DEFAULTS["min_epochs"])
    for key, value in (("trials", trials), ("min_epochs", min_epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SearchError(f"{key} must be an integer >= 1, got {value!r}")
    sampler = content.get("sampler", DEFAULTS["sampler"])
    pruner = str(content.get("pruner", DEFAULTS["pruner"])).lower()  # YAML reads `none` as text
    for key, value, allowed in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS)):
        if value not in allowed:
            raise SearchError(f"{key} must be one of {' | '.join(allowed)}, got {value!r}")
    spec = SearchSpec(dimensions, trials, sampler, pruner, min_epochs)
    spec.check_epochs(base.epochs)
    return spec


def _dimension(name: str, spec: Any, base: TrainConfig) -> Dimension:
    types = field_types()
    if name not in types:
        raise SearchError(f"search: unknown option {name!r}; allowed: {', '.join(types)}")
    if name in UNSEARCHABLE:
        raise SearchError(f"search: {name} is the same for every trial; set it in `fixed`")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchError(
            f"search: {name} must be one distribution, e.g. {{log_uniform: [1.0e-5, 1.0e-1]}}; "
            f"allowed: {', '.join(KINDS)}"
        )
    ((kind, values),) = spec.items()
    if kind not in KINDS:
        raise SearchError(
            f"search: {name}: unknown distribution {kind!r}; allowed: {', '.join(KINDS)}"
        )
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise SearchError(f"search: {name}: choice needs a non-empty list of values")
        choices = tuple(dict.fromkeys(_checked(name, value, base) for value in values))
        return Dimension(name, kind, choices=choices)
    low, high = _range(name, kind, values, types[name])
    dimension = Dimension(name, kind, low, high)
    wide = high - low >= MAX_CHECKED_INTS
    checked = (low, high) if kind != "int" or wide else range(int(low), int(high) + 1)
    for value in checked:
        _checked(name, value, base)
    return dimension


def _range(name: str, kind: str, values: Any, option_type: type) -> tuple[float, float]:
    if not isinstance(values, list) or len(values) != 2:
        raise SearchError(f"search: {name}: {kind} needs [low, high]")
    try:
        low, high = (float(value) for value in values)  # PyYAML reads `1e-5` as text
    except (TypeError, ValueError):
        raise SearchError(f"search: {name}: {kind} bounds must be numbers, got {values}") from None
    wanted = int if kind == "int" else float
    if option_type is not wanted:
        other = "int" if option_type is int else "uniform or log_uniform"
        raise SearchError(f"search: {name} takes {option_type.__name__} values; use {other}")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise SearchError(f"search: {name}: int bounds must be integers, got {values}")
    if low >= high:
        raise SearchError(f"search: {name}: {kind} needs low < high, got {values}")
    if kind == "log_uniform" and low <= 0:
        raise SearchError(f"search: {name}: log_uniform needs 0 < low, got {values}")
    return low, high


def _checked(name: str, value: Any, base: TrainConfig) -> str:
    """`value` validated as option `name` on top of `base`; returns it as logged."""
    try:
        config = TrainConfig.from_overrides({name: value}, base)
    except ConfigError as error:
        raise SearchError(f"search: {name} can sample {value!r}, refused: {error}") from None
    return config.to_params()[name]
