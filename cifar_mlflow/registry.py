"""The Model Registry: each study's best trial as `cifar10-<study>@champion`, one run's model.

A sweep ends with `register_sweep_champion`: among its finished trials that logged a model
(the ones it ran and the ones it reused), the best by `best_valid_acc` — never by a test
metric — becomes a new version of `cifar10-<study>` with the alias `champion`, unless the
current champion is at least as good. So a sweep that reuses every trial changes nothing, and
a better one adds a version and moves the alias. `register_run` registers one run's model,
leaving the aliases alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, ErrorCode

from cifar_mlflow import schema
from cifar_mlflow.errors import UserError
from cifar_mlflow.reachability import redact_uri

RANKING_METRIC = "best_valid_acc"


class RegistryError(UserError):
    """A run or model that cannot be registered, or a registry that refuses it."""


@dataclass(frozen=True)
class Registration:
    """A registered version, and whether it is the alias `champion` now."""

    name: str
    version: str
    run_id: str
    best_valid_acc: float
    champion: bool

    def describe(self) -> str:
        alias = f" @{schema.CHAMPION_ALIAS}" if self.champion else ""
        return (
            f"registered {self.name} version {self.version}{alias} (run {self.run_id}, "
            f"{RANKING_METRIC} {self.best_valid_acc:.4f})"
        )


def registered_model_name(study: str) -> str:
    return f"{schema.REGISTERED_MODEL_PREFIX}{study}"


def register_sweep_champion(
    study: str, parent_run_id: str, echo: Callable[[str], None] = lambda line: None
) -> Registration | None:
    """Register the sweep's best trial as `cifar10-<study>@champion` if it beats the champion.

    Returns the new version, or None when no trial has a model or the champion is as good;
    `echo` gets one line saying which.
    """
    client = MlflowClient()
    name = registered_model_name(study)
    for run in ranked_trials(client, parent_run_id):
        model = logged_model_of(client, run)
        if model is None:
            continue  # e.g. stopped early: no model to serve
        champion = champion_version(client, name)
        if champion is not None:
            kept = version_accuracy(client, champion)
            if kept >= accuracy(run):
                echo(
                    f"{name}@{schema.CHAMPION_ALIAS} stays version {champion.version} "
                    f"({RANKING_METRIC} {kept:.4f}; this sweep's best: {accuracy(run):.4f})"
                )
                return None
        registration = register(client, run, model, name)
        client.set_registered_model_alias(name, schema.CHAMPION_ALIAS, registration.version)
        registration = dataclasses.replace(registration, champion=True)
        echo(registration.describe().capitalize())
        return registration
    echo(f"No trial of this sweep logged a model: nothing registered as {name}")
    return None


def register_run(run_id: str, name: str | None = None) -> Registration:
    """Register run `run_id`'s model as a new version of `name` (default `cifar10-<study>`)."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        uri = redact_uri(mlflow.get_tracking_uri())
        raise RegistryError(f"no run with id {run_id!r} on {uri}") from None
    model = logged_model_of(client, run)
    if model is None:
        raise RegistryError(f"run {run_id} has no logged model (it did not finish training)")
    if name is None:
        study = run.data.tags.get(schema.TAG_STUDY, schema.NO_STUDY)
        name = registered_model_name(
            study if study != schema.NO_STUDY else run.data.tags[schema.TAG_MODEL]
        )
    return register(client, run, model, name)


def ranked_trials(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The sweep's finished trials, its own and the reused ones, best `best_valid_acc` first."""
    parent = client.get_run(parent_run_id)
    experiment_ids = [parent.info.experiment_id]
    finished = "attributes.status = 'FINISHED'"
    runs = search_all(
        client,
        experiment_ids,
        f"tags.`{schema.TAG_PARENT_RUN_ID}` = '{parent_run_id}' AND {finished}",
    )
    reused = [i for i in parent.data.tags.get(schema.TAG_REUSED_RUN_IDS, "").split(",") if i]
    if reused:
        ids = ", ".join(f"'{run_id}'" for run_id in reused)
        runs += search_all(client, experiment_ids, f"attributes.run_id IN ({ids}) AND {finished}")
    scored = [run for run in runs if math.isfinite(accuracy(run))]
    # Ties go to the trial that finished first: a re-run does not shuffle the champion.
    return sorted(scored, key=lambda run: (-accuracy(run), run.info.end_time or 0))


def search_all(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def accuracy(run: Run) -> float:
    return run.data.metrics.get(RANKING_METRIC, math.nan)


def logged_model_of(client: MlflowClient, run: Run) -> LoggedModel | None:
    """The model `run` logged as its output (the latest, if it logged several)."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    ready = [model for model in models if model.status == LoggedModelStatus.READY]  # uploaded
    return ready[0] if ready else None


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, schema.CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code not in (
            ErrorCode.Name(RESOURCE_DOES_NOT_EXIST),
            "INVALID_PARAMETER_VALUE",  # the model exists, the alias does not (some stores)
        ):
            raise
        return None


def version_accuracy(client: MlflowClient, version: ModelVersion) -> float:
    """The champion's `best_valid_acc`: its tag, else (a version registered by hand) its run's."""
    if RANKING_METRIC in version.tags:
        return float(version.tags[RANKING_METRIC])
    if version.run_id:
        return accuracy(client.get_run(version.run_id))
    return -math.inf


def register(client: MlflowClient, run: Run, model: LoggedModel, name: str) -> Registration:
    """A new version of `name` (created if needed) from `run`'s logged model, with its tags."""
    tags = {
        schema.TAG_STUDY: run.data.tags.get(schema.TAG_STUDY, schema.NO_STUDY),
        schema.TAG_MODEL: run.data.tags.get(schema.TAG_MODEL, ""),
        schema.TAG_TRIAL_KEY: run.data.tags.get(schema.TAG_TRIAL_KEY, ""),
        schema.TAG_SOURCE_RUN_ID: run.info.run_id,
        **{
            metric: str(run.data.metrics[metric])
            for metric in schema.VERSION_METRICS
            if metric in run.data.metrics
        },
    }
    try:
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(
                name,
                description=(
                    f"CIFAR-10 classifier: image files in, class and probabilities out, "
                    f"with mlflow.pyfunc.load_model('models:/{name}@{schema.CHAMPION_ALIAS}'); "
                    "the trained network with mlflow.pytorch.load_model"
                ),
            )
        # MLflow's own registration also links the logged model to the version (its UI page
        # lists it); what it prints on stderr would add lines to the one this project prints.
        with contextlib.redirect_stderr(io.StringIO()):
            version = mlflow.register_model(model.model_uri, name, tags=tags)
    except MlflowException as error:
        raise registry_error(error, name) from None
    return Registration(name, str(version.version), run.info.run_id, accuracy(run), champion=False)


def registry_error(error: MlflowException, name: str) -> Exception:
    """A refusal the user can act on as one line; anything else stays MLflow's error."""
    first_line = str(error.message).strip().splitlines()[0] if error.message else ""
    uri = redact_uri(mlflow.get_registry_uri())
    if error.error_code == ErrorCode.Name(PERMISSION_DENIED):
        return RegistryError(f"not allowed to register versions of {name} on {uri} ({first_line})")
    if error.error_code == "INVALID_PARAMETER_VALUE":
        return RegistryError(f"cannot register {name!r} on {uri}: {first_line}")
    return error
