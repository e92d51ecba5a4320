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
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, ErrorCode

from cifar_mlflow import schema
from cifar_mlflow.champion_evidence import ChampionDecision
from cifar_mlflow.errors import UserError
from cifar_mlflow.reachability import redact_uri
from cifar_mlflow.tracking.lookups import is_missing, run_by_id
from cifar_mlflow.tracking.pages import FINISHED, finished_sweep_trials, quoted, search_runs

RANKING_METRIC = schema.METRIC_BEST_VALID_ACC


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
    study: str,
    parent_run_id: str,
    echo: Callable[[str], None] = lambda line: None,
    min_delta: float = 0.0,
) -> Registration | None:
    """Register the sweep's best trial as `cifar10-<study>@champion` if it beats the champion.

    With at least two seeds on both sides, "beats" means the 95 % interval of the lead is above
    `min_delta` (`ChampionDecision.decide`); with one seed, a higher `best_valid_acc`.
    Returns the new version, or None when no trial has a model or the champion stays; `echo`
    gets a line saying which, and why.
    """
    client = MlflowClient()
    name = registered_model_name(study)
    for run in ranked_trials(client, parent_run_id):
        model = logged_model_of(client, run)
        if model is None:
            continue  # e.g. stopped early: no model to serve
        champion = champion_version(client, name)
        evidence: dict[str, str] = {}
        if champion is not None:
            decision = decide_champion(client, champion, run, min_delta)
            if not decision.moves:
                echo(
                    f"{name}@{schema.CHAMPION_ALIAS} stays version {champion.version} ({decision})"
                )
                return None
            echo(f"{name}@{schema.CHAMPION_ALIAS} moves: {decision}")
            evidence = decision.tags()
        registration = register(client, run, model, name, evidence)
        client.set_registered_model_alias(name, schema.CHAMPION_ALIAS, registration.version)
        registration = dataclasses.replace(registration, champion=True)
        echo(registration.describe().capitalize())
        return registration
    echo(f"No trial of this sweep logged a model: nothing registered as {name}")
    return None


def register_run(run_id: str, name: str | None = None) -> Registration:
    """Register run `run_id`'s model as a new version of `name` (default `cifar10-<study>`)."""
    client = MlflowClient()
    run = run_by_id(run_id, client)
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
    reused = [i for i in parent.data.tags.get(schema.TAG_REUSED_RUN_IDS, "").split(",") if i]
    runs = finished_sweep_trials(client, parent.info.experiment_id, parent_run_id, reused)
    scored = [run for run in runs if math.isfinite(accuracy(run))]
    # Ties go to the trial that finished first: a re-run does not shuffle the champion.
    return sorted(scored, key=lambda run: (-accuracy(run), run.info.end_time or 0))


def accuracy(run: Run) -> float:
    return run.data.metrics.get(RANKING_METRIC, math.nan)


def logged_model_of(client: MlflowClient, run: Run) -> LoggedModel | None:
    """The model `run` logged as its output (the latest, if it logged several)."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"{schema.LOGGED_MODEL_SOURCE_RUN} = '{run.info.run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    ready = [model for model in models if model.status == LoggedModelStatus.READY]  # uploaded
    return ready[0] if ready else None


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, schema.CHAMPION_ALIAS)
    except MlflowException as error:
        # INVALID_PARAMETER_VALUE: the model exists, the alias does not (some stores).
        if not (is_missing(error) or error.error_code == "INVALID_PARAMETER_VALUE"):
            raise
        return None


def seed_group_accuracies(client: MlflowClient, run: Run) -> list[float]:
    """`best_valid_acc` of every finished run of `run`'s seed group in its experiment: the
    runs of its setting with other seeds. Only `run`'s own for a run without the tag."""
    group = run.data.tags.get(schema.TAG_SEED_GROUP)
    if not group:
        return [accuracy(run)]
    runs = search_runs(
        client,
        [run.info.experiment_id],
        f"tags.{schema.TAG_SEED_GROUP} = {quoted(group)} AND {FINISHED}",
    )
    return [accuracy(found) for found in runs if math.isfinite(accuracy(found))]


def decide_champion(
    client: MlflowClient, champion: ModelVersion, challenger: Run, min_delta: float
) -> ChampionDecision:
    """Whether `challenger` replaces `champion`, from both seed groups' accuracies."""
    value = version_accuracy(client, champion)
    source_id = champion.tags.get(schema.TAG_SOURCE_RUN_ID) or champion.run_id
    kept = seed_group_accuracies(client, client.get_run(source_id)) if source_id else [value]
    return ChampionDecision.decide(
        kept, seed_group_accuracies(client, challenger), min_delta, value, accuracy(challenger)
    )


def version_accuracy(client: MlflowClient, version: ModelVersion) -> float:
    """The champion's `best_valid_acc`: its tag, else (a version registered by hand) its run's."""
    if RANKING_METRIC in version.tags:
        return float(version.tags[RANKING_METRIC])
    if version.run_id:
        return accuracy(client.get_run(version.run_id))
    return -math.inf


def register(
    client: MlflowClient,
    run: Run,
    model: LoggedModel,
    name: str,
    evidence: dict[str, str] | None = None,
) -> Registration:
    """A new version of `name` (created if needed) from `run`'s logged model, with its tags
    (and the `evidence` tags of the champion decision that chose it)."""
    tags = {
        **(evidence or {}),
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
