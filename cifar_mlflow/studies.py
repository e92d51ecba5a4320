"""Study files: a model, fixed settings, a grid of varied settings and the seeds.

A study file is YAML that users copy and extend:

    description: ResNet18 with Adam at five learning rates
    model: resnet18
    fixed: {optimizer: adam}
    grid: {lr: [0.1, 0.01, 0.001, 0.0001, 0.00001]}
    seeds: 1          # settings are repeated with seeds seed, seed+1, ...

Instead of `grid` (and `seeds`), a study may declare a `search`: distributions per option,
sampled for `trials` trials (see `search.space`). Every trial's configuration, or every value a
search can sample, is validated when the file is loaded, so a malformed study fails before any
run is created.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifar_mlflow import schema
from cifar_mlflow.config import ConfigError, TrainConfig
from cifar_mlflow.errors import UserError
from cifar_mlflow.search.space import SEARCH_KEYS, SearchError, SearchSpec, parse_search

STUDY_KEYS = ("description", "model", "fixed", "grid", "seeds", "search", *SEARCH_KEYS)


class StudyError(UserError):
    """A study name or file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    model: str
    fixed: Mapping[str, Any]
    grid: Mapping[str, list[Any]]
    seeds: int
    text: str  # the file as written, logged with the sweep
    search: SearchSpec | None = None  # a searched study has no grid

    @property
    def varied(self) -> tuple[str, ...]:
        return self.search.names if self.search else tuple(self.grid)

    def base_config(self, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Defaults ← fixed ← overrides: what every trial shares before its varied options.

        Overrides (`-P epochs=5`) apply to every trial but cannot change what the study varies.
        """
        overrides = dict(overrides or {})
        clash = sorted(set(overrides) & set(self.varied))
        if clash:
            raise StudyError(
                f"{clash[0]} is varied by study {self.name!r} and cannot be overridden"
            )
        try:
            base = TrainConfig.from_overrides({"model": self.model, **self.fixed, **overrides})
            if self.search is not None:
                self.search.check_epochs(base.epochs)
        except (ConfigError, SearchError) as error:
            raise StudyError(f"study {self.name!r}: {error}") from None
        return base

    def trial_configs(
        self, overrides: Mapping[str, Any] | None = None, seeds: int | None = None
    ) -> list[TrainConfig]:
        """One config per grid point and seed: `base_config(overrides)` ← grid point."""
        base = self.base_config(overrides)
        try:
            num_seeds = self.seeds if seeds is None else seeds
            if num_seeds < 1:
                raise StudyError(f"seeds must be an integer >= 1, got {num_seeds}")
            configs = []
            for point in itertools.product(*self.grid.values()):
                setting = TrainConfig.from_overrides(dict(zip(self.grid, point, strict=True)), base)
                configs += [
                    dataclasses.replace(setting, seed=setting.seed + offset)
                    for offset in range(num_seeds)
                ]
        except ConfigError as error:
            raise StudyError(f"study {self.name!r}: {error}") from None
        return configs


def load_study(name_or_path: str) -> Study:
    """A built-in study by name (`lr`) or a user's study file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = schema.BUILTIN_STUDY_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise StudyError(
                f"unknown study {name_or_path!r}; built-in studies: "
                f"{', '.join(schema.builtin_studies())}, or give the path of a .yaml study file"
            )
    try:
        text = path.read_text()
        content = yaml.safe_load(text)
    except OSError as error:
        raise StudyError(f"cannot read study file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise StudyError(f"study file {path} is not valid YAML{line}") from None
    study = _parse_study(path.stem, content, text, path)
    if study.search is None:
        study.trial_configs()  # a bad setting fails now, not after other trials have run
    return study


def _parse_study(name: str, content: Any, text: str, path: Path) -> Study:
    if not isinstance(content, dict):
        raise StudyError(f"study file {path} must be a mapping with keys {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(content) - set(STUDY_KEYS))
    if unknown:
        raise StudyError(
            f"study file {path}: unknown key {unknown[0]!r}; allowed: {', '.join(STUDY_KEYS)}"
        )
    if "model" not in content:
        raise StudyError(f"study file {path} must name a model")
    fixed = content.get("fixed") or {}
    grid = content.get("grid") or {}
    seeds = content.get("seeds", 1)
    if not isinstance(fixed, dict):
        raise StudyError(f"study file {path}: `fixed` must be a mapping of option: value")
    if not isinstance(grid, dict) or not all(
        isinstance(values, list) and values for values in grid.values()
    ):
        raise StudyError(f"study file {path}: `grid` must map options to non-empty lists")
    if not isinstance(seeds, int) or isinstance(seeds, bool):
        raise StudyError(f"study file {path}: `seeds` must be an integer >= 1, got {seeds!r}")
    study = Study(
        name=name,
        description=str(content.get("description", "")),
        model=str(content["model"]),
        fixed=fixed,
        grid=grid,
        seeds=seeds,
        text=text,
    )
    return _with_search(study, content, path)


def _with_search(study: Study, content: dict, path: Path) -> Study:
    """`study` with its `search` section parsed and validated, when it has one."""
    if "search" not in content:
        stray = sorted(set(content) & set(SEARCH_KEYS))
        if stray:
            raise StudyError(f"study file {path}: {stray[0]!r} needs a `search` section")
        return study
    if "grid" in content or "seeds" in content:
        extra = "grid" if "grid" in content else "seeds"
        raise StudyError(f"study file {path}: a study has `grid` or `search`, not `{extra}` too")
    base = study.base_config()
    try:
        search = parse_search(content, base)
    except SearchError as error:
        raise StudyError(f"study file {path}: {error}") from None
    return dataclasses.replace(study, search=search)
