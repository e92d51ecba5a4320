"""Running a study: one parent run, a nested run per missing trial, a summary.

A trial whose `trial_key` already has a FINISHED run in the experiment is reused, not run
again, so an interrupted or partly failed sweep is finished by running the same command again.
A trial that raises is recorded FAILED on its run and the sweep goes on with the next one.
A study with a `search` instead of a grid samples its trials (`search`, which imports Optuna
only for such a study).

The sweep decides which trials to run and collects and summarises their outcomes; an executor
only decides where the missing trials run: one after another in this process (`local`), or as
tasks on a Ray cluster (`ray`, in `ray_executor`, imported only when asked for).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import click

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.environment import check_machine
from cifar_mlflow.errors import ExecutorError, TrainingError
from cifar_mlflow.registry import register_sweep_champion
from cifar_mlflow.studies import Study, StudyError
from cifar_mlflow.sweeps.local import LocalExecutor
from cifar_mlflow.sweeps.ray_options import RayOptions
from cifar_mlflow.sweeps.trials import Executor, Outcomes, Trial, TrialOutcome, TrialStatus
from cifar_mlflow.tracking.client import run_id_from_mlflow_run, run_link, worker_environment
from cifar_mlflow.tracking.lookups import find_finished_run
from cifar_mlflow.tracking.sweep_runs import SweepParent, record_sweep_summary, sweep_run

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    link: str
    outcomes: list[TrialOutcome]

    @property
    def failures(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status is TrialStatus.FAILED]


class SweepFailed(TrainingError):
    """Some trials failed; the others finished and are recorded."""

    def __init__(self, study_name: str, result: SweepResult) -> None:
        failed = result.failures
        names = ", ".join(outcome.config.run_name() for outcome in failed)
        super().__init__(f"{len(failed)} of {len(result.outcomes)} trials failed: {names}")
        self.study_name = study_name
        self.result = result

    def report(self) -> str:
        """One line per failed trial with its reason, then the sweep's line with its link."""
        lines = [f"FAILED {o.config.run_name()}: {o.error}" for o in self.result.failures]
        return "\n".join([*lines, f"Sweep {self.study_name}: {self}. {self.result.link}"])


def executor_for(
    name: str, configs: Sequence[TrainConfig], ray_options: RayOptions
) -> contextlib.AbstractContextManager[Executor]:
    """The executor `name`, checked (and for Ray connected) before any run is created."""
    if name not in EXECUTORS:
        raise ExecutorError(f"executor must be one of {' | '.join(EXECUTORS)}, got {name!r}")
    if name == "local":
        if ray_options != RayOptions():
            raise ExecutorError("ray_address, cpus_per_trial and gpus_per_trial need executor=ray")
        return contextlib.nullcontext(LocalExecutor(configs))
    try:
        from cifar_mlflow.sweeps import ray_executor
    except ImportError as error:
        if (error.name or "").split(".")[0] != "ray":
            raise
        raise ExecutorError(
            "executor=ray needs Ray, which is not installed: pip install -e '.[ray]' in the "
            "project folder (or pip install 'ray>=2.9')"
        ) from None
    return ray_executor.connected(ray_options, worker_environment())


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs, decided once for a grid or a search before any run exists."""

    configs: list[TrainConfig]  # a grid's trials; a search's base configuration
    counts: dict[str, str]  # the parent run's `seeds` or `trials` param
    run_trials: Callable[[Executor, SweepParent, Callable[[str], None]], list[TrialOutcome]]


def grid_plan(study: Study, overrides: Mapping[str, str], seeds: int | None) -> SweepPlan:
    configs = study.trial_configs(overrides, seeds)
    return SweepPlan(
        configs,
        {"seeds": str(seeds or study.seeds)},
        lambda runner, parent, echo: run_missing_trials(runner, configs, parent, study.name, echo),
    )


def search_plan(study: Study, overrides: Mapping[str, str], trials: int | None) -> SweepPlan:
    from cifar_mlflow.search.trials import run_search_trials  # Optuna: only for a search

    base = study.base_config(overrides)
    total = trials or study.search.trials
    return SweepPlan(
        [base],
        {"trials": str(total)},
        lambda runner, parent, echo: run_search_trials(runner, study, base, total, parent, echo),
    )


def plan_for(
    study: Study, overrides: Mapping[str, str], seeds: int | None, trials: int | None
) -> SweepPlan:
    if study.search is None:
        if trials is not None:
            raise StudyError(f"trials needs a study with a `search`; {study.name!r} has a grid")
        return grid_plan(study, overrides, seeds)
    if seeds is not None:
        raise StudyError(f"seeds needs a study with a `grid`; {study.name!r} has a search")
    return search_plan(study, overrides, trials)


def run_sweep(
    study: Study,
    overrides: Mapping[str, str],
    *,
    seeds: int | None = None,
    trials: int | None = None,
    executor: str = "local",
    ray_options: RayOptions | None = None,
    experiment: str | None = None,
    register: bool = True,
    min_delta: float = 0.0,
    echo: Callable[[str], None] = click.echo,
) -> SweepResult:
    """Run `study` with `overrides` as one parent run with a nested run per missing trial.

    `trials` overrides a searched study's number of trials; `seeds` a grid's number of seeds.
    With `register`, the best trial becomes `cifar10-<study>@champion` if it beats the
    champion (`registry.register_sweep_champion`; `min_delta`: the lead it needs).
    """
    plan = plan_for(study, overrides, seeds, trials)
    ray_options = ray_options or RayOptions()
    if executor == "ray":
        ray_options.check_devices(plan.configs)
    for setting in {(c.device, c.precision, c.checkpoint_dir): c for c in plan.configs}.values():
        check_machine(setting)
    where = executor_for(executor, plan.configs, ray_options)
    params = {
        "study": study.name,
        **plan.counts,
        "executor": executor,
        **(ray_options.params() if executor == "ray" else {}),
        **overrides,
    }
    parent_run = sweep_run(
        study.name,
        study.text,
        study.varied,
        params,
        run_id=run_id_from_mlflow_run(),
        experiment=experiment,
    )
    with where as runner, parent_run as parent:
        outcomes = plan.run_trials(runner, parent, echo)
        summarise(parent, outcomes)
        if register:
            register_sweep_champion(study.name, parent.run_id, echo, min_delta)
        result = SweepResult(parent.run_id, run_link(parent.experiment_id, parent.run_id), outcomes)
        if result.failures:
            # Raised inside the parent run so that it ends FAILED with the reason on it.
            raise SweepFailed(study.name, result)
    return result


def run_missing_trials(
    runner: Executor,
    configs: Sequence[TrainConfig],
    parent: SweepParent,
    study_name: str,
    echo: Callable[[str], None],
) -> list[TrialOutcome]:
    """Reuse the finished trials, hand the others to `runner`; outcomes in the study's order."""
    outcomes, missing = Outcomes(echo), []
    for index, config in enumerate(configs, start=1):
        trial = Trial(index, config, f"[{index}/{len(configs)}] {config.run_name()}")
        done = find_finished_run(parent.experiment_id, config.trial_key())
        if done is None:
            missing.append(trial)
        else:
            best = done.data.metrics.get(schema.METRIC_BEST_VALID_ACC)
            reused = TrialOutcome(config, TrialStatus.REUSED, done.info.run_id, best)
            outcomes.add(index, trial.label, reused)
    for trial, outcome in runner.run(missing, parent, study_name):
        outcomes.add(trial.index, trial.label, outcome)
    return outcomes.in_order()


def summarise(parent: SweepParent, outcomes: Sequence[TrialOutcome]) -> None:
    scored = [
        o for o in outcomes if o.status is not TrialStatus.FAILED and o.best_valid_acc is not None
    ]
    best = max(scored, key=lambda o: o.best_valid_acc, default=None)
    record_sweep_summary(
        parent,
        Counter(outcome.status.value for outcome in outcomes),
        [o.run_id for o in outcomes if o.status is TrialStatus.REUSED],
        (best.run_id, best.best_valid_acc) if best else None,
    )
