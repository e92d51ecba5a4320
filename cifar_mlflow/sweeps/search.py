"""A searched study's trials: sampled, stopped early, and continued from the runs (issue 14).

The runs are the search's record. Each trial run carries the `search_key` of its search and
its `trial_number`; at the start of a sweep the trials found by that key rebuild the Optuna
study (`SearchState`): FINISHED runs are complete trials (their `best_valid_acc` is the
objective), FINISHED runs with `stopped_at_epoch` were stopped early, FAILED ones failed;
all of them count toward `trials` and are not run again. Runs that died RUNNING or KILLED
are continued first, in their own run, from their checkpoint; then new trials are sampled
until the search has `trials` of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.studies import Study
from cifar_mlflow.sweeps.early_stopping import EarlyStopping
from cifar_mlflow.sweeps.search_state import Ending, PastTrial, SearchState
from cifar_mlflow.sweeps.trials import Executor, Trial, TrialOutcome, TrialStatus
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
    interrupted = [run for run in runs if ending_of(run) is None]
    to_run = max(0, total - len(done))
    resumed = interrupted[:to_run]
    past = [
        past_trial(run, spec.names, history)
        for run, history in zip(done, metric_histories(done, schema.METRIC_VALID_ACC), strict=True)
    ]
    state = runner.host(
        SearchState,
        spec,
        base.epochs,
        base.seed,
        past,
        [{name: run.data.params[name] for name in spec.names} for run in resumed],
    )
    outcomes: dict[int, TrialOutcome] = {}

    def report(number: int, label: str, outcome: TrialOutcome) -> None:
        error = f" ({outcome.error})" if outcome.error else ""
        echo(f"{label}: {outcome.status.value}{error}")
        outcomes[number] = outcome

    for run, trial in zip(done, past, strict=True):
        if trial.ending is not Ending.FAILED:
            config = TrainConfig.from_overrides(trial.params, base)
            outcome = TrialOutcome(config, TrialStatus.REUSED, run.info.run_id, trial.value)
            number = trial_number(run)
            report(number, trial_label(number, total, config, spec.names), outcome)

    asked: dict[int, int] = {}  # trial number → its number in `state`

    def trials() -> Iterator[Trial]:
        new_numbers = itertools.count(max(map(trial_number, runs), default=0) + 1)
        for position in range(to_run):
            asked_number, values = state.ask()
            number = trial_number(resumed[position]) if position < len(resumed) else None
            number = number or next(new_numbers)
            asked[number] = asked_number
            config = TrainConfig.from_overrides(values, base)
            stopping = (EarlyStopping(state, asked_number),) if spec.pruner != "none" else ()
            yield Trial(
                number,
                config,
                trial_label(number, total, config, spec.names),
                tags={schema.TAG_TRIAL_NUMBER: str(number), schema.TAG_SEARCH_KEY: key},
                callbacks=stopping,
            )

    for trial, outcome in runner.run(trials(), parent, study.name):
        state.tell(asked[trial.index], ENDINGS[outcome.status], outcome.best_valid_acc)
        report(trial.index, trial.label, outcome)
    return [outcomes[number] for number in sorted(outcomes)]
