"""Sweeps: a study's trials as nested runs under one parent run (SPEC §6).

A trial whose `trial_key` already has a FINISHED run in the experiment is reused, not run
again, so an interrupted or partly failed sweep is finished by running the same command again.
A trial that raises is recorded FAILED on its run and the sweep goes on with the next one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import click

from cifar_mlflow import tracking
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays, load_arrays
from cifar_mlflow.errors import UserError
from cifar_mlflow.progress import ProgressCallback
from cifar_mlflow.studies import Study

EXECUTORS = ("local",)


@dataclass(frozen=True)
class TrialOutcome:
    config: TrainConfig
    status: str  # finished | failed | reused
    run_id: str | None
    best_valid_acc: float | None = None
    error: str | None = None


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
        return TrialOutcome(config, "failed", run_id, error=f"{type(error).__name__}: {error}")
    return TrialOutcome(config, "finished", run_id, best_valid_acc=final.best_valid_acc)


def run_sweep(
    study: Study,
    overrides: Mapping[str, str],
    *,
    seeds: int | None = None,
    executor: str = "local",
    experiment: str | None = None,
    echo: Callable[[str], None] = click.echo,
) -> SweepResult:
    """Run `study` with `overrides` as one parent run with a nested run per missing trial."""
    if executor not in EXECUTORS:
        raise UserError(f"executor must be one of {' | '.join(EXECUTORS)}, got {executor!r}")
    configs = study.trial_configs(overrides, seeds)
    arrays = data_sets(configs)
    params = {
        "study": study.name,
        "seeds": str(seeds or study.seeds),
        "executor": executor,
        **overrides,
    }
    outcomes: list[TrialOutcome] = []
    with tracking.sweep_run(
        study.name,
        study.text,
        study.varied,
        params,
        run_id=tracking.run_id_from_mlflow_run(),
        experiment=experiment,
    ) as parent:
        for index, config in enumerate(configs, start=1):
            label = f"[{index}/{len(configs)}] {config.run_name()}"
            done = tracking.find_finished_run(parent.info.experiment_id, config.trial_key())
            if done is not None:
                outcome = TrialOutcome(
                    config, "reused", done.info.run_id, done.data.metrics.get("best_valid_acc")
                )
            else:
                data = arrays[config.dataset, config.data_dir]
                outcome = run_trial(config, data, study.name, parent, label)
            echo(f"{label}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
            outcomes.append(outcome)
        summarise(parent.info.run_id, outcomes)
        result = SweepResult(parent.info.run_id, tracking.run_link(parent), outcomes)
        if result.failures:
            # Raised inside the parent run so that it ends FAILED with the reason on it.
            raise SweepFailed(result)
    return result


def summarise(parent_run_id: str, outcomes: Sequence[TrialOutcome]) -> None:
    scored = [o for o in outcomes if o.status != "failed" and o.best_valid_acc is not None]
    best = max(scored, key=lambda o: o.best_valid_acc, default=None)
    tracking.record_sweep_summary(
        parent_run_id,
        Counter(outcome.status for outcome in outcomes),
        [o.run_id for o in outcomes if o.status == "reused"],
        (best.run_id, best.best_valid_acc) if best else None,
    )
