"""A training run's lifecycle and description: start, tags, params, data set, outcome."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays
from cifar_mlflow.environment import Environment
from cifar_mlflow.tracking.client import mark_experiment_of, run_id_from_mlflow_run, use_experiment

SYSTEM_METRICS_INTERVAL_S = 5.0  # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it
ASYNC_LOGGING_BUFFER_S = 1  # MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS overrides it (whole seconds)


def run_tags(config: TrainConfig, study: str, env: Environment) -> dict[str, str]:
    tags = {
        schema.TAG_STUDY: study,
        schema.TAG_MODEL: config.model,
        schema.TAG_TRIAL_KEY: config.trial_key(),
        schema.TAG_SEED_GROUP: config.seed_group(),
        schema.TAG_SEED: str(config.seed),
        schema.TAG_TORCH_DEVICE: str(env.device),
        schema.TAG_TORCH_PRECISION: env.precision,
        schema.TAG_RUN_NAME: config.run_name(),  # readable, also for runs `mlflow run` created
    }
    unused = config.unused_fields()
    if unused:
        tags[schema.TAG_UNUSED_PARAMS] = ",".join(unused)
    return tags


def log_tags_and_new_params(run: Run, tags: Mapping[str, str], params: Mapping[str, str]) -> None:
    """Set `tags` and log the params `run` does not have yet, in one request.

    `mlflow run` has already logged its `-P` values, possibly spelled differently (`1e-3` for
    `0.001`); logging the same key with another value is an MLflow error.
    """
    existing = run.data.params
    MlflowClient().log_batch(
        run.info.run_id,
        params=[Param(key, value) for key, value in params.items() if key not in existing],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )


def log_dataset(run_id: str, arrays: CifarArrays) -> None:
    """Record the data set on run `run_id`: name, source folder, digest of the arrays."""
    with warnings.catch_warnings():
        # MLflow registers the local-file source twice and warns that it is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(arrays.source)
    dataset = MetaDataset(source=source, name=arrays.name, digest=arrays.digest())
    # What `mlflow.log_input` sends, but for run `run_id`: the active run is per thread.
    training = DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")]
    )
    try:
        MlflowClient().log_inputs(run_id, datasets=[training])
    except MlflowException:
        # The server looks the data set up, then inserts it: a trial of the same experiment
        # running at the same time (Ray) can insert it in between, failing this insert on a
        # unique key. Once more, the server finds it and only links it to this run.
        MlflowClient().log_inputs(run_id, datasets=[training])


def record_run_description(
    run: Run, config: TrainConfig, arrays: CifarArrays, study: str, env: Environment
) -> None:
    """Tags, params and data set of `run`: what the UI, the analysis and sweeps look up."""
    log_tags_and_new_params(run, run_tags(config, study, env), config.to_params())
    if not run.inputs.dataset_inputs:  # a continued run has it already
        log_dataset(run.info.run_id, arrays)


@contextlib.contextmanager
def training_run(
    config: TrainConfig, *, run_id: str | None = None, experiment: str | None = None
) -> Iterator[Run]:
    """A training run with system metrics, ended by the body's outcome.

    With `run_id` the existing run is used (the one `mlflow run` or a sweep created);
    otherwise a new run is created in `experiment`. See `ended_by_outcome` for its status.
    """
    # The setter writes the environment variable itself: only fill it in when the user has not.
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    # Buffering, MLflow's logging thread waits on its stop event instead of polling its queue
    # once a second, so ending the run drains it in milliseconds rather than up to a second.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", str(ASYNC_LOGGING_BUFFER_S))
    with started_run(config.run_name(), run_id=run_id, experiment=experiment) as run:
        monitor = SystemMetricsMonitor(run.info.run_id, resume_logging=run_id is not None)
        monitor.start()
        try:
            yield run
        finally:
            monitor.finish()


@contextlib.contextmanager
def started_run(
    run_name: str, *, run_id: str | None = None, experiment: str | None = None
) -> Iterator[Run]:
    """Run `run_id` (RUNNING again), else a new run `run_name` in `experiment`, ended by the
    body's outcome. Every call names the run: no run is active in this process (Ray threads
    and sweeps log to several runs at once)."""
    client = MlflowClient()
    if run_id is None:
        # Tags the experiment for the UI as it selects it; `mlflow run` selected it untagged.
        experiment_id = use_experiment(experiment or schema.DEFAULT_EXPERIMENT)
        # The source, user and git commit tags MLflow's own `start_run` adds.
        run = client.create_run(experiment_id, tags=resolve_tags(), run_name=run_name)
    else:
        client.update_run(run_id, status="RUNNING")
        run = client.get_run(run_id)
    with ended_by_outcome(run.info.run_id):
        mark_experiment_of(run)
        yield run


@contextlib.contextmanager
def ended_by_outcome(run_id: str) -> Iterator[None]:
    """End run `run_id` FINISHED, KILLED on Ctrl-C or SIGTERM, else FAILED with the reason."""
    client = MlflowClient()
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as error:
        client.set_tag(run_id, schema.TAG_FAILURE_REASON, f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        # set_terminated drains the asynchronous queue itself; flushing it first would stop
        # and restart its thread, which takes up to a second each time.
        client.set_terminated(run_id, "FINISHED")


def point_launcher_to(resumed_run_id: str) -> None:
    """Under `mlflow run -P resume=ID`, MLflow's new run only launches the continued one."""
    launcher = run_id_from_mlflow_run()
    if launcher and launcher != resumed_run_id:
        MlflowClient().set_tag(launcher, schema.TAG_RESUMED_RUN_ID, resumed_run_id)


def record_failure(run_id: str, reason: str) -> None:
    """End a run that `mlflow run` created as FAILED, with why, before any training."""
    client = MlflowClient()
    client.set_tag(run_id, schema.TAG_FAILURE_REASON, reason)
    client.set_terminated(run_id, "FAILED")
