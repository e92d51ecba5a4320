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

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.environment import check_machine
from cifar_mlflow.errors import UserError
from cifar_mlflow.registry import register_sweep_champion
from cifar_mlflow.studies import Study
from cifar_mlflow.sweeps.local import LocalExecutor
from cifar_mlflow.sweeps.parent_run import SweepParent, record_sweep_summary, sweep_run
from cifar_mlflow.sweeps.ray_options import RayOptions
from cifar_mlflow.sweeps.trials import Executor, Trial, TrialOutcome, TrialStatus
from cifar_mlflow.tracking.client import run_id_from_mlflow_run, run_link, worker_environment
from cifar_mlflow.tracking.lookups import find_finished_run

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    link: str
    outcomes: list[TrialOutcome]

    @property
    def failures(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status is TrialStatus.FAILED]


class SweepFailed(Exception):
    """Some trials failed; the others finished and are recorded."""

    def __init__(self, result: SweepResult) -> None:
        failed = result.failures
        names = ", ".join(outcome.config.run_name() for outcome in failed)
        super().__init__(f"{len(failed)} of {len(result.outcomes)} trials failed: {names}")
        self.result = result


def executor_for(
    name: str, configs: Sequence[TrainConfig], ray_options: RayOptions
) -> contextlib.AbstractContextManager[Executor]:
    """The executor `name`, checked (and for Ray connected) before any run is created."""
    if name not in EXECUTORS:
        raise UserError(f"executor must be one of {' | '.join(EXECUTORS)}, got {name!r}")
    if name == "local":
        if ray_options != RayOptions():
            raise UserError("ray_address, cpus_per_trial and gpus_per_trial need executor=ray")
        return contextlib.nullcontext(LocalExecutor(configs))
    try:
        from cifar_mlflow.sweeps import ray_executor
    except ImportError as error:
        if (error.name or "").split(".")[0] != "ray":
            raise
        raise UserError(
            "executor=ray needs Ray, which is not installed: pip install -e '.[ray]' in the "
            "project folder (or pip install 'ray>=2.9')"
        ) from None
    return ray_executor.connected(ray_options, worker_environment())


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
    ray_options = ray_options or RayOptions()
    if study.search is None:
        if trials is not None:
            raise UserError(f"trials needs a study with a `search`; {study.name!r} has a grid")
        configs = study.trial_configs(overrides, seeds)
        counts = {"seeds": str(seeds or study.seeds)}
    else:
        if seeds is not None:
            raise UserError(f"seeds needs a study with a `grid`; {study.name!r} has a search")
        configs = [study.base_config(overrides)]
        from cifar_mlflow.sweeps.search import run_search_trials  # Optuna: only for a search

        counts = {"trials": str(trials or study.search.trials)}
    if executor == "ray":
        ray_options.check_devices(configs)
    for setting in {(c.device, c.precision, c.checkpoint_dir): c for c in configs}.values():
        check_machine(setting)
    where = executor_for(executor, configs, ray_options)
    params = {
        "study": study.name,
        **counts,
        "executor": executor,
        **(ray_options.params() if executor == "ray" else {}),
        **overrides,
    }
    with (
        where as runner,
        sweep_run(
            study.name,
            study.text,
            study.varied,
            params,
            run_id=run_id_from_mlflow_run(),
            experiment=experiment,
        ) as parent,
    ):
        if study.search is None:
            outcomes = run_missing_trials(runner, configs, parent, study.name, echo)
        else:
            total = trials or study.search.trials
            outcomes = run_search_trials(runner, study, configs[0], total, parent, echo)
        summarise(parent, outcomes)
        if register:
            register_sweep_champion(study.name, parent.run_id, echo, min_delta)
        link = run_link(parent.experiment_id, parent.run_id)
        result = SweepResult(parent.run_id, link, outcomes)
        if result.failures:
            # Raised inside the parent run so that it ends FAILED with the reason on it.
            raise SweepFailed(result)
    return result


def run_missing_trials(
    runner: Executor,
    configs: Sequence[TrainConfig],
    parent: SweepParent,
    study_name: str,
    echo: Callable[[str], None],
) -> list[TrialOutcome]:
    """Reuse the finished trials, hand the others to `runner`; outcomes in the study's order."""
    outcomes: dict[int, TrialOutcome] = {}
    missing: list[Trial] = []

    def report(trial: Trial, outcome: TrialOutcome) -> None:
        error = f" ({outcome.error})" if outcome.error else ""
        echo(f"{trial.label}: {outcome.status.value}{error}")
        outcomes[trial.index] = outcome

    for index, config in enumerate(configs, start=1):
        trial = Trial(index, config, f"[{index}/{len(configs)}] {config.run_name()}")
        done = find_finished_run(parent.experiment_id, config.trial_key())
        if done is None:
            missing.append(trial)
        else:
            best = done.data.metrics.get("best_valid_acc")
            report(trial, TrialOutcome(config, TrialStatus.REUSED, done.info.run_id, best))
    for trial, outcome in runner.run(missing, parent, study_name):
        report(trial, outcome)
    return [outcomes[index] for index in sorted(outcomes)]


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
