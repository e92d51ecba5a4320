"""Where and as whom this process logs: tracking URI, credentials, experiments, run links."""

from __future__ import annotations

import os
from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking._tracking_service.utils import _tracking_store_registry

from cifar_mlflow import schema
from cifar_mlflow.errors import ExperimentDeletedError, TrackingUriError
from cifar_mlflow.reachability import check_reachable, is_server_uri, redact_uri

# What MLflow's client reads from the environment to reach and log in to a server.
CLIENT_CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)


def run_id_from_mlflow_run() -> str | None:
    """The run `mlflow run` created before starting the entry point, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def check_tracking_server() -> None:
    """One line within seconds, instead of MLflow's minutes of retries, if the server is gone.

    A URI whose scheme no MLflow store takes is one line too, not MLflow's traceback.
    """
    check_tracking_uri(mlflow.get_tracking_uri())


def check_tracking_uri(uri: str) -> None:
    """`check_tracking_server` for `uri`: what analysis and `predict` read from is checked alike."""
    try:
        _tracking_store_registry.get_store_builder(uri)
    except MlflowException:
        schemes = " | ".join(
            f"{scheme}://" for scheme in _tracking_store_registry._registry if scheme
        )
        raise TrackingUriError(
            f"tracking URI {redact_uri(uri)} has a scheme MLflow cannot log to; use a folder "
            f"path or one of {schemes}"
        ) from None
    check_reachable(uri)


def worker_environment() -> dict[str, str]:
    """The variables that make a process elsewhere log where this one does, as the same user.

    The URI is the resolved one, so MLflow's default store counts too when none is set.
    """
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    env.update(
        {name: os.environ[name] for name in CLIENT_CREDENTIAL_VARIABLES if name in os.environ}
    )
    return env


def use_worker_environment(env: Mapping[str, str]) -> None:
    """Log as `worker_environment` says, also in a process that served another sweep before."""
    for name in CLIENT_CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(env)


def use_experiment(name: str) -> str:
    """The id of experiment `name` (created if needed), tagged for MLflow's training-run view."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name)
        except MlflowException as error:
            # Another process (a Ray worker, a second sweep) created it in the meantime.
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise ExperimentDeletedError(
            f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id if experiment else '?'}) or choose "
            "another name"
        )
    mark_experiment_kind(experiment)
    return experiment.experiment_id


def mark_experiment_kind(experiment: Experiment) -> None:
    if experiment.tags.get(schema.EXPERIMENT_KIND_TAG) != schema.EXPERIMENT_KIND:
        MlflowClient().set_experiment_tag(
            experiment.experiment_id, schema.EXPERIMENT_KIND_TAG, schema.EXPERIMENT_KIND
        )


def mark_experiment_of(run: Run) -> None:
    """Tag the experiment `mlflow run` selected (untagged) for the run it created."""
    if run.info.run_id == run_id_from_mlflow_run():
        mark_experiment_kind(MlflowClient().get_experiment(run.info.experiment_id))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the tracking URI is a server, else None.

    Credentials may sit in the URI's user-info part; they never appear in the link.
    """
    if not is_server_uri(tracking_uri):
        return None
    return f"{redact_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def run_link(experiment_id: str, run_id: str) -> str:
    """Where to look at a run: its UI page on a server, else the `mlflow ui` command."""
    uri = mlflow.get_tracking_uri()
    return run_url(uri, experiment_id, run_id) or (
        f"run {run_id}: browse it with `mlflow ui --backend-store-uri {redact_uri(uri)}`"
    )
