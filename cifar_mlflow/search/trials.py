"""A searched study's trials: sampled, stopped early, and continued from the runs.

The runs are the search's record. Each trial run carries the `search_key` of its search and
its `trial_number`; at the start of a sweep the trials found by that key rebuild the Optuna
study (`SearchState`): FINISHED runs are complete trials (their `best_valid_acc` is the
objective), FINISHED runs with `stopped_at_epoch` were stopped early, FAILED ones failed;
all of them count toward `trials` and are not run again. Runs that died RUNNING or KILLED
are continued first, in their own run, from their checkpoint; then new trials are sampled
until the search has `trials` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.search.early_stopping import EarlyStopping
from cifar_mlflow.search.state import Ending, PastTrial, SearchState
from cifar_mlflow.studies import Study
from cifar_mlflow.sweeps.trials import Executor, Outcomes, Trial, TrialOutcome, TrialStatus
from cifar_mlflow.tracking.lookups import metric_histories, search_trial_runs
from cifar_mlflow.tracking.sweep_runs import SweepParent, mark_search

if TYPE_CHECKING:
    from mlflow.entities import Run

ENDINGS = {
    TrialStatus.FINISHED: Ending.COMPLETE,
    TrialStatus.STOPPED: Ending.STOPPED,
    TrialStatus.FAILED: Ending.FAILED,
}


def ending_of(run: Run) -> Ending | None:
    """How a trial's run ended; None while it is RUNNING or was KILLED (to be continued)."""
    if run.info.status == "FINISHED":
        stopped = schema.TAG_STOPPED_AT_EPOCH in run.data.tags
        return Ending.STOPPED if stopped else Ending.COMPLETE
    return Ending.FAILED if run.info.status == "FAILED" else None


def past_trial(run: Run, names: tuple[str, ...], valid_acc: dict[int, float]) -> PastTrial:
    ending = ending_of(run)
    value = run.data.metrics.get(schema.METRIC_BEST_VALID_ACC)
    if ending is Ending.COMPLETE and value is None:
        ending = Ending.FAILED  # its final metrics never arrived: nothing to rank it by
    params = {name: run.data.params[name] for name in names}
    return PastTrial(params, ending, value, valid_acc)


def trial_number(run: Run) -> int:
    return int(run.data.tags[schema.TAG_TRIAL_NUMBER])


def trial_label(number: int, total: int, config: TrainConfig, names: tuple[str, ...]) -> str:
    """`[3/12] mlp lr=0.0012`: the prefix of a trial's progress lines."""
    params = config.to_params()
    return f"[{number}/{total}] {config.model} " + " ".join(f"{n}={params[n]}" for n in names)


def run_search_trials(
    runner: Executor,
    study: Study,
    base: TrainConfig,
    total: int,
    parent: SweepParent,
    echo: Callable[[str], None],
) -> list[TrialOutcome]:
    """Continue the search of `study` on `base` until it has `total` trials.

    Outcomes by trial number: the earlier trials that finished (complete or stopped) as
    REUSED, then this sweep's. A trial is sampled once the earlier ones have told the sampler
    how they ended, as far as the executor runs them one after another.
    """
    spec = study.search
    key = spec.key(base)
    mark_search(parent, key)
    runs = sorted(search_trial_runs(parent.experiment_id, key), key=trial_number)
    done = [run for run in runs if ending_of(run) is not None]
    resumed = [run for run in runs if ending_of(run) is None][: max(0, total - len(done))]
    histories = metric_histories(done, schema.METRIC_VALID_ACC)
    past = [past_trial(run, spec.names, h) for run, h in zip(done, histories, strict=True)]
    resumed_params = [{name: run.data.params[name] for name in spec.names} for run in resumed]
    state = runner.host(SearchState, spec, base.epochs, base.seed, past, resumed_params)
    outcomes = Outcomes(echo)
    for run, trial in zip(done, past, strict=True):
        if trial.ending is not Ending.FAILED:
            config = TrainConfig.from_overrides(trial.params, base)
            number = trial_number(run)
            outcome = TrialOutcome(config, TrialStatus.REUSED, run.info.run_id, trial.value)
            outcomes.add(number, trial_label(number, total, config, spec.names), outcome)
    numbers = [*map(trial_number, resumed), *new_numbers(runs, total - len(done) - len(resumed))]
    trials = SampledTrials(state, study, base, key, total, numbers)
    for trial, outcome in runner.run(trials, parent, study.name):
        trials.tell(trial, outcome)
        outcomes.add(trial.index, trial.label, outcome)
    return outcomes.in_order()


def new_numbers(runs: Sequence[Run], count: int) -> range:
    """The numbers of `count` new trials, after every number the search's runs carry."""
    first = max(map(trial_number, runs), default=0) + 1
    return range(first, first + max(0, count))


class SampledTrials:
    """This sweep's trials of the search, numbered `numbers`, each sampled when it is due.

    Read lazily by the executor: a trial is asked of the sampler only after the outcomes the
    executor has already reported were told to it.
    """

    def __init__(
        self,
        state: SearchState,
        study: Study,
        base: TrainConfig,
        key: str,
        total: int,
        numbers: Sequence[int],
    ) -> None:
        self.state, self.spec, self.base = state, study.search, base
        self.key, self.total, self.numbers = key, total, numbers
        self._asked: dict[int, int] = {}  # trial number → its number in `state`

    def __iter__(self) -> Iterator[Trial]:
        for number in self.numbers:
            asked_number, values = self.state.ask()
            self._asked[number] = asked_number
            config = TrainConfig.from_overrides(values, self.base)
            stopping = self.spec.pruner != "none"
            yield Trial(
                number,
                config,
                trial_label(number, self.total, config, self.spec.names),
                tags={schema.TAG_TRIAL_NUMBER: str(number), schema.TAG_SEARCH_KEY: self.key},
                callbacks=(EarlyStopping(self.state, asked_number),) if stopping else (),
            )

    def tell(self, trial: Trial, outcome: TrialOutcome) -> None:
        """Tell the sampler how `trial` ended."""
        asked_number = self._asked.pop(trial.index)
        self.state.tell(asked_number, ENDINGS[outcome.status], outcome.best_valid_acc)
