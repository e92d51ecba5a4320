"""`executor=local`: one trial after another in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays, load_arrays
from cifar_mlflow.sweeps.trials import Trial, TrialOutcome, run_trial
from cifar_mlflow.tracking.sweep_runs import SweepParent

T = TypeVar("T")


def data_sets(configs: Sequence[TrainConfig]) -> dict[tuple[str, str], CifarArrays]:
    """Each distinct data set of the trials, loaded once (and before any run exists)."""
    loaded: dict[tuple[str, str], CifarArrays] = {}
    for config in configs:
        key = (config.dataset, config.data_dir)
        if key not in loaded:
            loaded[key] = load_arrays(config)
    return loaded


class LocalExecutor:
    """One trial after another in this process, on data sets loaded before any run exists."""

    def __init__(self, configs: Sequence[TrainConfig]) -> None:
        self.arrays = data_sets(configs)

    def host(self, kind: type[T], *args: Any) -> T:
        return kind(*args)  # the trials run in this process

    def run(
        self, trials: Iterable[Trial], parent: SweepParent, study_name: str
    ) -> Iterator[tuple[Trial, TrialOutcome]]:
        for trial in trials:
            data = self.arrays[trial.config.dataset, trial.config.data_dir]
            yield trial, run_trial(trial, data, study_name, parent)
