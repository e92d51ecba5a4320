"""What every executor shares: a trial, its outcome, and running one trial as a child run."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays
from cifar_mlflow.progress import ProgressCallback
from cifar_mlflow.sweeps.parent_run import SweepParent, adopt_trial_run, create_trial_run
from cifar_mlflow.tracking.lookups import checkpoint_of, find_interrupted_run
from cifar_mlflow.training import train_tracked


class TrialStatus(enum.Enum):
    FINISHED = "finished"
    FAILED = "failed"
    REUSED = "reused"  # a FINISHED run of the same trial_key from an earlier sweep


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


class Executor(Protocol):
    def run(
        self, trials: Sequence[Trial], parent: SweepParent, study_name: str
    ) -> Iterator[tuple[Trial, TrialOutcome]]:
        """Run each trial as a child of `parent`; yield its outcome as soon as it is known."""
        ...


def run_trial(
    config: TrainConfig, arrays: CifarArrays, study_name: str, parent: SweepParent, label: str
) -> TrialOutcome:
    """Train one trial as a child run of `parent`; a failure is recorded, not raised.

    A trial whose earlier run died (RUNNING or KILLED) continues in that run, from its last
    checkpoint, and moves under `parent`: no trial is run twice.
    """
    interrupted = find_interrupted_run(parent.experiment_id, config.trial_key())
    if interrupted is None:
        run_id, resume = create_trial_run(parent, config, study_name), None
    else:
        run_id, resume = interrupted.info.run_id, checkpoint_of(config, interrupted)
        adopt_trial_run(parent, run_id)
    try:
        _, final = train_tracked(
            config,
            arrays,
            study=study_name,
            run_id=run_id,
            callbacks=[ProgressCallback(label)],
            resume=resume,
        )
    except Exception as error:
        return TrialOutcome.failed(config, run_id, error)
    return TrialOutcome(config, TrialStatus.FINISHED, run_id, best_valid_acc=final.best_valid_acc)
