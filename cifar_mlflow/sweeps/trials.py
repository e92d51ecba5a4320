"""What every executor shares: a trial, its outcome, and running one trial as a child run."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays
from cifar_mlflow.engine import Callback
from cifar_mlflow.progress import ProgressCallback
from cifar_mlflow.tracking.lookups import find_interrupted_run
from cifar_mlflow.tracking.sweep_runs import SweepParent, adopt_trial_run, create_trial_run
from cifar_mlflow.training import last_checkpoint, train_tracked


class TrialStatus(enum.Enum):
    FINISHED = "finished"
    FAILED = "failed"
    REUSED = "reused"  # a FINISHED run of the same trial_key from an earlier sweep
    STOPPED = "stopped"  # stopped early by a search's pruner; its run is FINISHED


@dataclass(frozen=True)
class TrialOutcome:
    config: TrainConfig
    status: TrialStatus
    run_id: str | None
    best_valid_acc: float | None = None
    error: str | None = None

    @classmethod
    def failed(cls, config: TrainConfig, run_id: str | None, error: BaseException) -> TrialOutcome:
        """The outcome of a trial that raised `error`; its first line is the reason shown."""
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0] if lines else ''}"
        return cls(config, TrialStatus.FAILED, run_id, error=reason)


@dataclass(frozen=True)
class Trial:
    """A trial the sweep has to run; `index` orders the outcomes as the study lists them."""

    index: int
    config: TrainConfig
    label: str  # "[2/4] mlpmixer-patch4-seed42", the prefix of its progress lines
    tags: Mapping[str, str] = field(default_factory=dict)  # a searched trial's number and search
    callbacks: tuple[Callback, ...] = ()  # a searched trial's early stopping


class Outcomes:
    """Trial outcomes as the executor reports them, one line each; read back in trial order."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self._by_index: dict[int, TrialOutcome] = {}

    def add(self, index: int, label: str, outcome: TrialOutcome) -> None:
        error = f" ({outcome.error})" if outcome.error else ""
        self.echo(f"{label}: {outcome.status.value}{error}")
        self._by_index[index] = outcome

    def in_order(self) -> list[TrialOutcome]:
        return [self._by_index[index] for index in sorted(self._by_index)]


T = TypeVar("T")


class Executor(Protocol):
    def host(self, kind: type[T], *args: Any) -> T:
        """A `kind(*args)` that this executor's trials can call while they run."""
        ...

    def run(
        self, trials: Iterable[Trial], parent: SweepParent, study_name: str
    ) -> Iterator[tuple[Trial, TrialOutcome]]:
        """Run each trial as a child of `parent`; yield its outcome as soon as it is known.

        `trials` is read lazily, after the outcomes yielded before: a search decides its next
        trial from those.
        """
        ...


def run_trial(
    trial: Trial, arrays: CifarArrays, study_name: str, parent: SweepParent
) -> TrialOutcome:
    """Train one trial as a child run of `parent`; a failure is recorded, not raised.

    A trial whose earlier run died (RUNNING or KILLED) continues in that run, from its last
    checkpoint, and moves under `parent`: no trial is run twice.
    """
    config = trial.config
    interrupted = find_interrupted_run(parent.experiment_id, config.trial_key())
    if interrupted is None:
        run_id, resume = create_trial_run(parent, config, study_name, trial.tags), None
    else:
        run_id, resume = interrupted.info.run_id, last_checkpoint(config, interrupted.info.run_id)
        adopt_trial_run(parent, run_id, trial.tags)
    try:
        _, final = train_tracked(
            config,
            arrays,
            study=study_name,
            run_id=run_id,
            callbacks=[ProgressCallback(trial.label), *trial.callbacks],
            resume=resume,
        )
    except Exception as error:
        return TrialOutcome.failed(config, run_id, error)
    if final is None:
        return TrialOutcome(config, TrialStatus.STOPPED, run_id)
    return TrialOutcome(config, TrialStatus.FINISHED, run_id, best_valid_acc=final.best_valid_acc)
