"""A search's Optuna study, rebuilt in memory from its runs at the start of each sweep.

The runs on the tracking server are the search's only record (see `search.trials`): each
sweep adds its earlier trials to a fresh in-memory study — parameters, per-epoch `valid_acc`
as intermediate values, and how each ended — so the sampler and the pruner continue the
search without a second database. Under Ray the one `SearchState` lives in an actor that the
trials report their epochs to, so the pruner compares every trial with all the others.
"""

from __future__ import annotations

import enum
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from cifar_mlflow.schema import METRIC_VALID_ACC
from cifar_mlflow.search.space import Dimension, SearchSpec

# Completed trials the median pruner waits for: a median of fewer is mostly noise.
MEDIAN_STARTUP_TRIALS = 3
# Each sweep's sampler is seeded from the study's seed and the trials it already knows, so a
# search continued over several sweeps draws a reproducible sequence, never the first draws
# again.
SEED_STRIDE = 1_000_003


class Ending(enum.Enum):
    """How a trial of the search ended, as its run records it."""

    COMPLETE = "complete"  # trained all its epochs: its value is its best valid_acc
    STOPPED = "stopped"  # stopped early by the pruner
    FAILED = "failed"


TRIAL_STATES = {
    Ending.COMPLETE: TrialState.COMPLETE,
    Ending.STOPPED: TrialState.PRUNED,
    Ending.FAILED: TrialState.FAIL,
}


@dataclass(frozen=True)
class PastTrial:
    """A trial of an earlier sweep, read back from its run."""

    params: Mapping[str, str]  # the searched options, as logged
    ending: Ending
    value: float | None  # best valid_acc of a complete trial
    valid_acc: Mapping[int, float] = field(default_factory=dict)  # epoch → valid_acc


def distribution(dimension: Dimension) -> BaseDistribution:
    if dimension.kind == "choice":
        return CategoricalDistribution(dimension.choices)
    if dimension.kind == "int":
        return IntDistribution(int(dimension.low), int(dimension.high))
    return FloatDistribution(dimension.low, dimension.high, log=dimension.kind == "log_uniform")


class SearchState:
    """Ask for trials, hear their epochs, tell their ends: the sampler and pruner's one study.

    Trials are named by Optuna's numbers in this study; a sweep maps them to its runs.
    """

    def __init__(
        self,
        spec: SearchSpec,
        epochs: int,
        seed: int,
        past: Sequence[PastTrial],
        resumed: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """`resumed`: params of interrupted trials, which the first `ask`s return in order."""
        optuna.logging.set_verbosity(logging.WARNING)
        self.dimensions = {dimension.name: dimension for dimension in spec.dimensions}
        self.distributions = {name: distribution(d) for name, d in self.dimensions.items()}
        sampler_seed = seed * SEED_STRIDE + len(past) + len(resumed)
        sampler = (
            optuna.samplers.TPESampler(seed=sampler_seed)
            if spec.sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=sampler_seed)
        )
        # Named: Hyperband assigns trials to brackets by a hash of the study's name and the
        # trial's number, and an unnamed study gets a random name.
        self.study = optuna.create_study(
            study_name="search", direction="maximize", sampler=sampler, pruner=pruner(spec, epochs)
        )
        for trial in past:
            self.study.add_trial(self._frozen(trial))
        for params in resumed:
            self.study.enqueue_trial(self._values(params))
        self.running: dict[int, optuna.Trial] = {}

    def _values(self, params: Mapping[str, str]) -> dict[str, float | int | str]:
        return {name: self.dimensions[name].value_of(params[name]) for name in self.dimensions}

    def _frozen(self, trial: PastTrial) -> optuna.trial.FrozenTrial:
        state = TRIAL_STATES[trial.ending]
        return optuna.trial.create_trial(
            state=state,
            value=trial.value if state is TrialState.COMPLETE else None,
            params=self._values(trial.params),
            distributions=self.distributions,
            intermediate_values=dict(trial.valid_acc),
        )

    def ask(self) -> tuple[int, dict[str, float | int | str]]:
        """The next trial's number and its sampled values (an interrupted trial's first)."""
        trial = self.study.ask(self.distributions)
        self.running[trial.number] = trial
        return trial.number, trial.params

    def report(self, number: int, epoch: int, valid_acc: float) -> str | None:
        """Record trial `number`'s epoch; why the pruner would stop it now, or None."""
        trial = self.running[number]
        trial.report(valid_acc, epoch)
        if not trial.should_prune():
            return None
        return prune_reason(self.study, trial, epoch)

    def tell(self, number: int, ending: Ending, value: float | None = None) -> None:
        state = TRIAL_STATES[ending]
        trial = self.running.pop(number)
        self.study.tell(trial, value if state is TrialState.COMPLETE else None, state=state)


def prune_reason(study: optuna.Study, trial: optuna.Trial, epoch: int) -> str:
    """What the pruner compared when it stopped `trial` at `epoch`, in the objective's terms
    (the median is over the complete trials' `valid_acc` at that epoch)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    best = max(next(t for t in running if t.number == trial.number).intermediate_values.values())
    if isinstance(study.pruner, optuna.pruners.MedianPruner):
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        at_epoch = [
            t.intermediate_values[epoch] for t in complete if epoch in t.intermediate_values
        ]
        return (
            f"{METRIC_VALID_ACC} {best:.2f} below the median {statistics.median(at_epoch):.2f} of "
            f"{len(at_epoch)} complete trials"
        )
    return f"{METRIC_VALID_ACC} {best:.2f} not in the best third of its Hyperband rung"


def pruner(spec: SearchSpec, epochs: int) -> optuna.pruners.BasePruner:
    """The study's pruner; none stops a trial before `min_epochs`, nor after its last epoch."""
    if spec.pruner == "none" or spec.min_epochs >= epochs:
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=spec.min_epochs
        )
    return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs, max_resource=epochs)
