"""Sweeps: a study's trials as nested runs under one parent run (SPEC §6).

A trial whose `trial_key` already has a FINISHED run in the experiment is reused, not run
again, so an interrupted or partly failed sweep is finished by running the same command again.
A trial that raises is recorded FAILED on its run and the sweep goes on with the next one.

The sweep decides which trials to run and collects and summarises their outcomes; an executor
only decides where the missing trials run: one after another in this process (`local`), or as
tasks on a Ray cluster (`ray`, in `ray_executor`, imported only when asked for).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import click

from cifar_mlflow import tracking
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays, load_arrays
from cifar_mlflow.errors import UserError
from cifar_mlflow.progress import ProgressCallback
from cifar_mlflow.studies import Study

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class TrialOutcome:
    config: TrainConfig
    status: str  # finished | failed | reused
    run_id: str | None
    best_valid_acc: float | None = None
    error: str | None = None

    @classmethod
    def failed(cls, config: TrainConfig, run_id: str | None, error: BaseException) -> TrialOutcome:
        """The outcome of a trial that raised `error`; its first line is the reason shown."""
        lines = str(error).strip().splitlines()
        return cls(
            config, "failed", run_id, error=f"{type(error).__name__}: {lines[0] if lines else ''}"
        )


@dataclass(frozen=True)
class Trial:
    """A trial the sweep has to run; `index` orders the outcomes as the study lists them."""

    index: int
    config: TrainConfig
    label: str  # "[2/4] mlpmixer-patch4-seed42", the prefix of its progress lines


@dataclass(frozen=True)
class RayOptions:
    """Where `executor=ray` runs the trials, and what each trial reserves there."""

    address: str = ""  # "" or "local": a Ray instance on this machine, started if none runs
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions let small models share a GPU

    def params(self) -> dict[str, str]:
        return {
            "ray_address": self.address,
            "cpus_per_trial": f"{self.cpus_per_trial:g}",
            "gpus_per_trial": f"{self.gpus_per_trial:g}",
        }


class Executor(Protocol):
    def run(
        self, trials: Sequence[Trial], parent: tracking.Run, study_name: str
    ) -> Iterator[tuple[Trial, TrialOutcome]]:
        """Run each trial as a child of `parent`; yield its outcome as soon as it is known."""
        ...


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    link: str
    outcomes: list[TrialOutcome]

    @property
    def failures(self) -> list[TrialOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]


class SweepFailed(Exception):
    """Some trials failed; the others finished and are recorded."""

    def __init__(self, result: SweepResult) -> None:
        failed = result.failures
        names = ", ".join(outcome.config.run_name() for outcome in failed)
        super().__init__(f"{len(failed)} of {len(result.outcomes)} trials failed: {names}")
        self.result = result


def data_sets(configs: Sequence[TrainConfig]) -> dict[tuple[str, str], CifarArrays]:
    """Each distinct data set of the trials, loaded once (and before any run exists)."""
    loaded: dict[tuple[str, str], CifarArrays] = {}
    for config in configs:
        key = (config.dataset, config.data_dir)
        if key not in loaded:
            loaded[key] = load_arrays(config)
    return loaded


def run_trial(
    config: TrainConfig, arrays: CifarArrays, study_name: str, parent: tracking.Run, label: str
) -> TrialOutcome:
    """Train one trial as a child run of `parent`; a failure is recorded, not raised.

    A trial whose earlier run died (RUNNING or KILLED) continues in that run, from its last
    checkpoint, and moves under `parent`: no trial is run twice.
    """
    interrupted = tracking.find_interrupted_run(parent.info.experiment_id, config.trial_key())
    if interrupted is None:
        run_id, resume = tracking.create_trial_run(parent, config, study_name), None
    else:
        run_id, resume = interrupted.info.run_id, tracking.checkpoint_of(config, interrupted)
        tracking.adopt_trial_run(parent, run_id)
    try:
        _, final = tracking.train_tracked(
            config,
            arrays,
            study=study_name,
            run_id=run_id,
            callbacks=[ProgressCallback(label)],
            resume=resume,
        )
    except Exception as error:
        return TrialOutcome.failed(config, run_id, error)
    return TrialOutcome(config, "finished", run_id, best_valid_acc=final.best_valid_acc)


class LocalExecutor:
    """One trial after another in this process, on data sets loaded before any run exists."""

    def __init__(self, configs: Sequence[TrainConfig]) -> None:
        self.arrays = data_sets(configs)

    def run(
        self, trials: Sequence[Trial], parent: tracking.Run, study_name: str
    ) -> Iterator[tuple[Trial, TrialOutcome]]:
        for trial in trials:
            data = self.arrays[trial.config.dataset, trial.config.data_dir]
            yield trial, run_trial(trial.config, data, study_name, parent, trial.label)


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
        from cifar_mlflow import ray_executor
    except ImportError as error:
        if (error.name or "").split(".")[0] != "ray":
            raise
        raise UserError(
            "executor=ray needs Ray, which is not installed: pip install -e '.[ray]' in the "
            "project folder (or pip install 'ray>=2.9')"
        ) from None
    return ray_executor.connected(ray_options, tracking.worker_environment())


def run_sweep(
    study: Study,
    overrides: Mapping[str, str],
    *,
    seeds: int | None = None,
    executor: str = "local",
    ray_options: RayOptions | None = None,
    experiment: str | None = None,
    echo: Callable[[str], None] = click.echo,
) -> SweepResult:
    """Run `study` with `overrides` as one parent run with a nested run per missing trial."""
    ray_options = ray_options or RayOptions()
    configs = study.trial_configs(overrides, seeds)
    where = executor_for(executor, configs, ray_options)
    params = {
        "study": study.name,
        "seeds": str(seeds or study.seeds),
        "executor": executor,
        **(ray_options.params() if executor == "ray" else {}),
        **overrides,
    }
    with (
        where as runner,
        tracking.sweep_run(
            study.name,
            study.text,
            study.varied,
            params,
            run_id=tracking.run_id_from_mlflow_run(),
            experiment=experiment,
        ) as parent,
    ):
        outcomes = run_missing_trials(runner, configs, parent, study.name, echo)
        summarise(parent.info.run_id, outcomes)
        result = SweepResult(parent.info.run_id, tracking.run_link(parent), outcomes)
        if result.failures:
            # Raised inside the parent run so that it ends FAILED with the reason on it.
            raise SweepFailed(result)
    return result


def run_missing_trials(
    runner: Executor,
    configs: Sequence[TrainConfig],
    parent: tracking.Run,
    study_name: str,
    echo: Callable[[str], None],
) -> list[TrialOutcome]:
    """Reuse the finished trials, hand the others to `runner`; outcomes in the study's order."""
    outcomes: dict[int, TrialOutcome] = {}
    missing: list[Trial] = []

    def report(trial: Trial, outcome: TrialOutcome) -> None:
        echo(f"{trial.label}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
        outcomes[trial.index] = outcome

    for index, config in enumerate(configs, start=1):
        trial = Trial(index, config, f"[{index}/{len(configs)}] {config.run_name()}")
        done = tracking.find_finished_run(parent.info.experiment_id, config.trial_key())
        if done is None:
            missing.append(trial)
        else:
            metrics = done.data.metrics
            report(
                trial,
                TrialOutcome(config, "reused", done.info.run_id, metrics.get("best_valid_acc")),
            )
    for trial, outcome in runner.run(missing, parent, study_name):
        report(trial, outcome)
    return [outcomes[index] for index in sorted(outcomes)]


def summarise(parent_run_id: str, outcomes: Sequence[TrialOutcome]) -> None:
    scored = [o for o in outcomes if o.status != "failed" and o.best_valid_acc is not None]
    best = max(scored, key=lambda o: o.best_valid_acc, default=None)
    tracking.record_sweep_summary(
        parent_run_id,
        Counter(outcome.status for outcome in outcomes),
        [o.run_id for o in outcomes if o.status == "reused"],
        (best.run_id, best.best_valid_acc) if best else None,
    )
