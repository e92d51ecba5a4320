"""Finding runs again: a run by id, the epochs it logged, a trial's earlier runs, histories."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from cifar_mlflow import schema
from cifar_mlflow.errors import RunNotFoundError
from cifar_mlflow.reachability import redact_uri
from cifar_mlflow.tracking.pages import search_runs

# Metric-history requests are independent REST round trips: overlapping them hides the latency
# of a remote server. Kept under MLflow's HTTP connection pool size (MLFLOW_HTTP_POOL_MAXSIZE,
# 10) so connections are reused.
HISTORY_THREADS = 8


def is_missing(error: MlflowException) -> bool:
    """Whether the server answered "no such run/model", as opposed to any other failure."""
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def run_by_id(run_id: str, client: MlflowClient | None = None) -> Run:
    """Run `run_id`; RunNotFoundError only when the server says it has no such run."""
    client = client or MlflowClient()
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if not is_missing(error):
            raise
        uri = redact_uri(client.tracking_uri or mlflow.get_tracking_uri())
        raise RunNotFoundError(f"no run with id {run_id!r} on {uri}") from None


def logged_epochs(run: Run) -> set[int]:
    """Epochs whose metrics the server already holds (a new run has none: no request)."""
    if schema.EPOCH_METRICS[0] not in run.data.metrics:
        return set()
    history = MlflowClient().get_metric_history(run.info.run_id, schema.EPOCH_METRICS[0])
    return {metric.step for metric in history}


def metric_histories(runs: Sequence[Run], metric: str) -> list[dict[int, float]]:
    """Each run's logged values of `metric`, by step (requests overlapped)."""
    client = MlflowClient()

    def history(run: Run) -> dict[int, float]:
        values = client.get_metric_history(run.info.run_id, metric)
        return {value.step: value.value for value in values}

    with ThreadPoolExecutor(HISTORY_THREADS) as pool:
        return list(pool.map(history, runs))


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
    return search_runs(
        MlflowClient(),
        [experiment_id],
        f"tags.{schema.TAG_SEARCH_KEY} = '{search_key}' and "
        f"tags.{schema.TAG_ROLE} = '{schema.ROLE_TRIAL}'",
        order_by=["attributes.start_time ASC"],
    )


def latest_trial_run(experiment_id: str, trial_key: str, status_filter: str) -> Run | None:
    runs = search_runs(
        MlflowClient(),
        [experiment_id],
        f"tags.{schema.TAG_TRIAL_KEY} = '{trial_key}' and {status_filter}",
        limit=1,
    )
    return runs[0] if runs else None
