"""Finding runs again: the run to resume, the epochs it logged, a trial's earlier runs."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import TrainingState, checkpoint_path, load_checkpoint
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.errors import UserError
from cifar_mlflow.reachability import redact_uri


def logged_epochs(run: Run) -> set[int]:
    """Epochs whose metrics the server already holds (a new run has none: no request)."""
    if schema.EPOCH_METRICS[0] not in run.data.metrics:
        return set()
    history = MlflowClient().get_metric_history(run.info.run_id, schema.EPOCH_METRICS[0])
    return {metric.step for metric in history}


def resumable_run(run_id: str) -> tuple[Run, TrainConfig, TrainingState]:
    """The run to continue, its configuration and its last checkpoint; UserError if none."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        uri = redact_uri(mlflow.get_tracking_uri())
        raise UserError(f"no run with id {run_id!r} on {uri}") from None
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already FINISHED; nothing to resume")
    config = TrainConfig.from_params(run.data.params)
    state = checkpoint_of(config, run)
    if state is None:
        raise UserError(
            f"run {run_id} has no checkpoint in {config.checkpoint_dir}; it cannot be resumed"
        )
    return run, config, state


def checkpoint_of(config: TrainConfig, run: Run) -> TrainingState | None:
    return load_checkpoint(checkpoint_path(config.checkpoint_dir, run.info.run_id))


def find_interrupted_run(experiment_id: str, trial_key: str) -> Run | None:
    """The latest run of `trial_key` that died while training (RUNNING or KILLED), if any."""
    run = latest_trial_run(experiment_id, trial_key, "attributes.status != 'FINISHED'")
    return run if run and run.info.status in ("RUNNING", "KILLED") else None


def find_finished_run(experiment_id: str, trial_key: str) -> Run | None:
    """The latest run of `trial_key` in the experiment that FINISHED all its epochs, if any.

    A trial a search stopped early is FINISHED too, but trained only part of its epochs.
    """
    finished = f"attributes.status = 'FINISHED' and tags.{schema.TAG_STOPPED_AT_EPOCH} IS NULL"
    return latest_trial_run(experiment_id, trial_key, finished)


def search_trial_runs(experiment_id: str, search_key: str) -> list[Run]:
    """Every trial run of the search `search_key` in the experiment, whatever its status."""
    client, runs, token = MlflowClient(), [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{schema.TAG_SEARCH_KEY} = '{search_key}' and "
            f"tags.{schema.TAG_ROLE} = '{schema.ROLE_TRIAL}'",
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            return runs


def latest_trial_run(experiment_id: str, trial_key: str, status_filter: str) -> Run | None:
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.{schema.TAG_TRIAL_KEY} = '{trial_key}' and {status_filter}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None
