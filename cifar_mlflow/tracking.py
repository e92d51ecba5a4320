"""Every MLflow call of the training side: runs, params, metrics, inputs, artifacts.

The engine reports through `engine.Callback`; `MlflowCallback` turns those reports into one
batched, asynchronous MLflow call per epoch, so tracking does not stall the training loop.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import cloudpickle
import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import (
    DatasetInput,
    Experiment,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.time import get_current_time_millis
from torch import nn

import cifar_mlflow.models
from cifar_mlflow import schema
from cifar_mlflow.checkpoint import TrainingState, checkpoint_path, load_checkpoint
from cifar_mlflow.config import TrainConfig, field_types
from cifar_mlflow.data import CifarArrays, to_device
from cifar_mlflow.engine import (
    Callback,
    CheckpointCallback,
    Environment,
    EpochMetrics,
    FinalMetrics,
    environment_for,
    fit,
)
from cifar_mlflow.errors import UserError
from cifar_mlflow.server import check_reachable
from cifar_mlflow.weights import weights_figure

SYSTEM_METRICS_INTERVAL_S = 5.0  # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it
ASYNC_LOGGING_BUFFER_S = 1  # MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS overrides it (whole seconds)


def run_id_from_mlflow_run() -> str | None:
    """The run `mlflow run` created before starting the entry point, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def check_tracking_server() -> None:
    """One line within seconds, instead of MLflow's minutes of retries, if the server is gone."""
    check_reachable(mlflow.get_tracking_uri())


# What MLflow's client reads from the environment to reach and log in to a server.
CLIENT_CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
)


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
    """Select (creating if needed) experiment `name`, tagged for MLflow's training-run view."""
    experiment = mlflow.set_experiment(name)  # fetched with its tags: no second lookup
    mark_experiment_kind(experiment)
    return experiment.experiment_id


def mark_experiment_kind(experiment: Experiment) -> None:
    if experiment.tags.get(schema.EXPERIMENT_KIND_TAG) != schema.EXPERIMENT_KIND:
        MlflowClient().set_experiment_tag(
            experiment.experiment_id, schema.EXPERIMENT_KIND_TAG, schema.EXPERIMENT_KIND
        )


def run_tags(config: TrainConfig, study: str, env: Environment) -> dict[str, str]:
    tags = {
        schema.TAG_STUDY: study,
        schema.TAG_MODEL: config.model,
        schema.TAG_TRIAL_KEY: config.trial_key(),
        schema.TAG_SEED: str(config.seed),
        schema.TAG_TORCH_DEVICE: str(env.device),
        schema.TAG_TORCH_PRECISION: env.precision,
        "mlflow.runName": config.run_name(),  # readable, also for runs `mlflow run` created
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
    config: TrainConfig,
    arrays: CifarArrays,
    *,
    study: str,
    env: Environment,
    run_id: str | None = None,
    experiment: str | None = None,
) -> Iterator[tuple[Run, Future]]:
    """An active MLflow run and the writing of its description: params, tags and data set.

    With `run_id` the existing run is used (the one `mlflow run` or a sweep created);
    otherwise a new run is created in `experiment`. The run ends FINISHED, or FAILED with the
    reason as a tag when the body raises or its description could not be recorded, KILLED on
    Ctrl-C.

    The description (two requests, ~0.1 s) is written by a thread while the body starts
    training; the body waits for the future before it reports the first epoch, so that the
    run's `trial_key` tag, by which a sweep finds a killed trial, is on the server before its
    first checkpoint.
    """
    if run_id is None:
        # Tags the experiment for the UI as it selects it; `mlflow run` selected it untagged.
        use_experiment(experiment or schema.DEFAULT_EXPERIMENT)
    # The setter writes the environment variable itself: only fill it in when the user has not.
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    # Buffering, MLflow's logging thread waits on its stop event instead of polling its queue
    # once a second, so ending the run drains it in milliseconds rather than up to a second.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", str(ASYNC_LOGGING_BUFFER_S))
    run = mlflow.start_run(
        run_id=run_id,
        run_name=None if run_id else config.run_name(),
        nested=mlflow.active_run() is not None,
        log_system_metrics=True,
    )
    with ended_by_outcome(), ThreadPoolExecutor(1, "run-description") as background:
        described = background.submit(record_run_description, run, config, arrays, study, env)
        # `mlflow run` selected the experiment untagged; a sweep's trials and resumed runs are
        # in experiments tagged when their first run started.
        if run_id is not None and run_id == run_id_from_mlflow_run():
            mark_experiment_kind(MlflowClient().get_experiment(run.info.experiment_id))
        yield run, described
        described.result()


@contextlib.contextmanager
def ended_by_outcome() -> Iterator[None]:
    """End the active run FINISHED, KILLED on Ctrl-C or SIGTERM, else FAILED with the reason."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag(schema.TAG_FAILURE_REASON, f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        # end_run drains the asynchronous queue itself; flushing it first would stop and
        # restart its thread, which takes up to a second each time.
        mlflow.end_run("FINISHED")


def point_launcher_to(resumed_run_id: str) -> None:
    """Under `mlflow run -P resume=ID`, MLflow's new run only launches the continued one."""
    launcher = run_id_from_mlflow_run()
    if launcher and launcher != resumed_run_id:
        MlflowClient().set_tag(launcher, "resumed_run_id", resumed_run_id)


def record_failure(run_id: str, reason: str) -> None:
    """End a run that `mlflow run` created as FAILED, with why, before any training."""
    client = MlflowClient()
    client.set_tag(run_id, schema.TAG_FAILURE_REASON, reason)
    client.set_terminated(run_id, "FAILED")


def run_link(run: Run) -> str:
    """Where to look at `run`: its UI page on a server, else the `mlflow ui` command."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return f"run {run.info.run_id}: browse it with `mlflow ui --backend-store-uri {uri}`"


class MlflowCallback(Callback):
    """Logs the engine's reports to `run`.

    The artifacts of the final model (config.json, the weights figure, the model: ~0.4 s of
    requests for the MLP) are uploaded by a thread while the engine evaluates the test split;
    `on_train_end` waits for them. Use it as a context manager: leaving waits for the upload
    also when training raised.
    """

    def __init__(
        self,
        run: Run,
        config: TrainConfig,
        input_example: torch.Tensor,
        logged_epochs: set[int] | None = None,
        described: Future | None = None,
    ) -> None:
        self.run = run
        self.config = config
        self.input_example = input_example
        # The run's description being written (`training_run`): it must land first.
        self.described = described
        # Epochs the server holds already (a resumed run): never logged twice.
        self.logged_epochs = set(logged_epochs or ())
        self._uploader = ThreadPoolExecutor(1, "model-artifacts")
        self._artifacts_logged: Future | None = None

    def __enter__(self) -> MlflowCallback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._uploader.shutdown()

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        if self.described is not None:
            self.described.result()  # done long ago, or its error ends the run now
            self.described = None
        if metrics.epoch not in self.logged_epochs:
            self._log_metrics(metrics.metrics(), step=metrics.epoch)
            self.logged_epochs.add(metrics.epoch)

    def on_test_start(self, model: nn.Module) -> None:
        self._artifacts_logged = self._uploader.submit(self._log_artifacts, model)

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        model_id = None
        try:
            model_id = self._artifacts_logged.result()  # started in on_test_start
        finally:
            # Also the logged model's metrics (the UI shows them with it); a run whose upload
            # failed keeps its results all the same.
            self._log_metrics(asdict(metrics), step=0, model_id=model_id)

    def _log_artifacts(self, model: nn.Module) -> str:
        """Uploads the final model's artifacts; returns the logged model's id."""
        config = {"config": self.config.to_params(), "trial_key": self.config.trial_key()}
        # Both files in one upload: each separate log_* call would first fetch the run.
        with tempfile.TemporaryDirectory(prefix="cifar-mlflow-artifacts-") as folder:
            (Path(folder) / schema.CONFIG_ARTIFACT).write_text(json.dumps(config, indent=2))
            figure_path = Path(folder) / schema.WEIGHTS_FIGURE_ARTIFACT
            figure_path.parent.mkdir(parents=True, exist_ok=True)
            weights_figure(model).savefig(figure_path)
            MlflowClient().log_artifacts(self.run.info.run_id, folder)
        return log_model(self.run, model, self.input_example, self.config.to_params())

    def _log_metrics(
        self, values: Mapping[str, float], step: int, model_id: str | None = None
    ) -> None:
        # One batched call, queued for MLflow's background thread (under a millisecond here).
        # `mlflow.log_metrics(run_id=...)` would first fetch the run: a blocking round trip.
        now = get_current_time_millis()
        metrics = [
            Metric(key, float(value), now, step, model_id=model_id) for key, value in values.items()
        ]
        MlflowClient().log_batch(self.run.info.run_id, metrics=metrics, synchronous=False)


def log_model(
    run: Run, model: nn.Module, input_example: torch.Tensor, params: Mapping[str, str]
) -> str:
    """Log a CPU fp32 copy of `model` as an output of `run`; returns the logged model's id.

    `mlflow.pytorch.load_model` loads it without this project installed, under the Python
    minor version in its python_env.yaml: the model classes are pickled by value (shipping
    the package as code instead would upload each of its files separately), so the classes of
    a loaded model are copies, not those of `cifar_mlflow.models`. The pickle format keeps the
    batch dimension free (pt2 would freeze it to the example's).

    Called from a thread without an active run, `mlflow.pytorch.log_model` only fills the
    model created here; linking it to `run` is then one request, where MLflow would fetch the
    run twice and copy the history of every metric onto the model, a request per metric.
    """
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    example = input_example.detach().float().cpu().contiguous().numpy().astype(np.float32)
    logged = mlflow.initialize_logged_model(
        name=schema.MODEL_NAME,
        source_run_id=run.info.run_id,
        params=dict(params),
        experiment_id=run.info.experiment_id,
    )
    with classes_pickled_by_value(cifar_mlflow.models):
        mlflow.pytorch.log_model(
            cpu_model,
            name=schema.MODEL_NAME,
            model_id=logged.model_id,
            serialization_format="pickle",
            input_example=example,
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"cloudpickle=={cloudpickle.__version__}",
            ],
        )
    MlflowClient().log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


@contextlib.contextmanager
def classes_pickled_by_value(package: ModuleType) -> Iterator[None]:
    """Inside the block, cloudpickle (MLflow's pickler) stores `package`'s classes' code."""
    if package.__name__ in cloudpickle.list_registry_pickle_by_value():
        yield  # registered by someone else, who keeps it
        return
    cloudpickle.register_pickle_by_value(package)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(package)


def train_tracked(
    config: TrainConfig,
    arrays: CifarArrays,
    *,
    study: str = schema.NO_STUDY,
    run_id: str | None = None,
    experiment: str | None = None,
    callbacks: Sequence[Callback] = (),
    resume: TrainingState | None = None,
) -> tuple[Run, FinalMetrics]:
    """Train `config` on `arrays` inside a tracked run; returns the finished run.

    Each epoch is checkpointed; with `resume` (the checkpoint of run `run_id`) training
    continues after its epoch, and epochs the server never received are logged first.
    """
    env = environment_for(config)
    data = to_device(arrays, config, env.device, env.memory_format)
    with training_run(
        config,
        arrays,
        study=study,
        env=env,
        run_id=run_id,
        experiment=experiment,
    ) as (run, described):
        run_id = run.info.run_id
        checkpoint = checkpoint_path(config.checkpoint_dir, run_id)
        tracker = MlflowCallback(run, config, data.valid.images[:2], logged_epochs(run), described)
        with tracker, CheckpointCallback(checkpoint) as checkpointer:
            for epoch in resume.history if resume else ():
                tracker.on_epoch_end(EpochMetrics(**epoch))
            _, final = fit(config, data, env, [*callbacks, tracker, checkpointer], resume)
    # A finished run needs no checkpoint; a failed or killed one keeps it for --resume.
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return MlflowClient().get_run(run_id), final


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
        raise UserError(f"no run with id {run_id!r} on {mlflow.get_tracking_uri()}") from None
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already FINISHED; nothing to resume")
    known = field_types()
    config = TrainConfig.from_overrides({k: v for k, v in run.data.params.items() if k in known})
    state = checkpoint_of(config, run)
    if state is None:
        raise UserError(
            f"run {run_id} has no checkpoint in {config.checkpoint_dir}; it cannot be resumed"
        )
    return run, config, state


def find_interrupted_run(experiment_id: str, trial_key: str) -> Run | None:
    """The latest run of `trial_key` that died while training (RUNNING or KILLED), if any."""
    run = latest_trial_run(experiment_id, trial_key, "attributes.status != 'FINISHED'")
    return run if run and run.info.status in ("RUNNING", "KILLED") else None


def checkpoint_of(config: TrainConfig, run: Run) -> TrainingState | None:
    return load_checkpoint(checkpoint_path(config.checkpoint_dir, run.info.run_id))


def adopt_trial_run(parent: Run, run_id: str) -> None:
    """Move a trial under `parent`, where the sweep that continues it shows it."""
    MlflowClient().set_tag(run_id, schema.TAG_PARENT_RUN_ID, parent.info.run_id)


def find_finished_run(experiment_id: str, trial_key: str) -> Run | None:
    """The latest FINISHED run of `trial_key` in the experiment, if any."""
    return latest_trial_run(experiment_id, trial_key, "attributes.status = 'FINISHED'")


def latest_trial_run(experiment_id: str, trial_key: str, status_filter: str) -> Run | None:
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.{schema.TAG_TRIAL_KEY} = '{trial_key}' and {status_filter}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


@contextlib.contextmanager
def sweep_run(
    study_name: str,
    study_text: str,
    varied: Sequence[str],
    params: Mapping[str, str],
    *,
    run_id: str | None = None,
    experiment: str | None = None,
) -> Iterator[Run]:
    """The active parent run of a sweep; its trials are created with `create_trial_run`."""
    if run_id is None:
        # Tags the experiment for the UI as it selects it; `mlflow run` selected it untagged.
        use_experiment(experiment or schema.DEFAULT_EXPERIMENT)
    run = mlflow.start_run(run_id=run_id, run_name=study_name)
    with ended_by_outcome():
        if run_id is not None:
            mark_experiment_kind(MlflowClient().get_experiment(run.info.experiment_id))
        tags = {
            schema.TAG_STUDY: study_name,
            schema.TAG_ROLE: schema.ROLE_SWEEP,
            schema.TAG_VARIED: ",".join(varied),
            "mlflow.runName": study_name,
        }
        log_tags_and_new_params(run, tags, params)
        mlflow.log_text(study_text, schema.STUDY_ARTIFACT)
        yield run


def create_trial_run(parent: Run, config: TrainConfig, study_name: str) -> str:
    """A child run of `parent` for one trial, to be filled by `train_tracked(run_id=...)`."""
    run = MlflowClient().create_run(
        parent.info.experiment_id,
        run_name=config.run_name(),
        tags={
            schema.TAG_PARENT_RUN_ID: parent.info.run_id,
            schema.TAG_ROLE: schema.ROLE_TRIAL,
            schema.TAG_STUDY: study_name,
        },
    )
    return run.info.run_id


def record_sweep_summary(
    parent_run_id: str,
    counts: Mapping[str, int],
    reused_run_ids: Sequence[str],
    best: tuple[str, float] | None,
) -> None:
    """Counts of finished/failed/reused trials, the reused runs and the best trial."""
    metrics = {
        schema.METRIC_TRIALS_FINISHED: counts.get("finished", 0),
        schema.METRIC_TRIALS_FAILED: counts.get("failed", 0),
        schema.METRIC_TRIALS_REUSED: counts.get("reused", 0),
    }
    tags = {schema.TAG_REUSED_RUN_IDS: ",".join(reused_run_ids)}
    if best is not None:
        tags[schema.TAG_BEST_RUN_ID] = best[0]
        metrics[schema.METRIC_BEST_VALID_ACC] = best[1]
    client = MlflowClient()
    client.log_batch(
        parent_run_id,
        metrics=[
            Metric(key, float(value), get_current_time_millis(), 0)
            for key, value in metrics.items()
        ],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
