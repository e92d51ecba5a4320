"""The engine's reports as MLflow calls: the run's description, epochs, final model."""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import cloudpickle
import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Run
from torch import nn

import cifar_mlflow
from cifar_mlflow import schema
from cifar_mlflow.classifier import ImageClassifier, model_metadata, model_signature
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays
from cifar_mlflow.engine import Callback
from cifar_mlflow.environment import Environment
from cifar_mlflow.models.registry import extra_modules
from cifar_mlflow.schema import EpochMetrics, FinalMetrics
from cifar_mlflow.tracking.metric_writer import MetricWriter
from cifar_mlflow.tracking.runs import record_run_description
from cifar_mlflow.weights import weights_figure

INPUT_EXAMPLE_IMAGES = 2  # test images of the run's data set, stored with the model


class MlflowCallback(Callback):
    """Logs the engine's reports to `run`, one batched request per epoch, in the background.

    Entering starts writing the run's description (tags, params, data set: ~0.1 s of
    requests) in a thread while training starts; the first epoch's report waits for it, so that
    the run's `trial_key` tag, by which a sweep finds a killed trial, is on the server before
    the epoch's checkpoint. The final model's artifacts (config.json, the weights figure, the
    model: ~0.4 s for the MLP) are uploaded by a thread while the engine evaluates the test
    split; `on_train_end` waits for them. Leaving waits for both threads also when training
    raised, and raises a failed description's error. Metrics go through a `MetricWriter`:
    each epoch arrives exactly once, and leaving waits until they all have.
    """

    def __init__(
        self,
        run: Run,
        config: TrainConfig,
        arrays: CifarArrays,
        *,
        study: str,
        env: Environment,
        logged_epochs: set[int] | None = None,
    ) -> None:
        self.run = run
        self.config = config
        # Epochs the server holds already (a resumed run): never logged twice.
        self.logged_epochs = set(logged_epochs or ())
        self._description_args = (arrays, study, env)
        self._worker = ThreadPoolExecutor(1, "run-tracking")
        self._described: Future | None = None
        self._artifacts_logged: Future | None = None
        self._metrics = MetricWriter(run.info.run_id)

    def __enter__(self) -> MlflowCallback:
        arrays, study, env = self._description_args
        self._described = self._worker.submit(
            record_run_description, self.run, self.config, arrays, study, env
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._worker.shutdown()
        self._metrics.close()
        if self._described is not None:
            self._described.result()

    def _wait_described(self) -> None:
        if self._described is not None:
            described, self._described = self._described, None
            described.result()  # done long ago, or its error ends the run now

    def on_train_start(
        self,
        model: nn.Module,
        num_epochs: int,
        batches_per_epoch: int,
        completed: Sequence[EpochMetrics],
    ) -> None:
        # A resumed run: the epochs its checkpoint holds that the server never received.
        for metrics in completed:
            self.on_epoch_end(metrics)

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self._wait_described()
        if metrics.epoch not in self.logged_epochs:
            self._log_metrics(metrics.metrics(), step=metrics.epoch)
            self.logged_epochs.add(metrics.epoch)

    def on_test_start(self, model: nn.Module) -> None:
        self._wait_described()
        self._artifacts_logged = self._worker.submit(self._log_artifacts, model)

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        model_id = None
        try:
            model_id = self._artifacts_logged.result()  # started in on_test_start
        finally:
            # Also the logged model's metrics (the UI shows them with it); a run whose upload
            # failed keeps its results all the same.
            self._log_metrics(metrics.metrics(), step=0, model_id=model_id)

    def on_train_stopped(self, epoch: int) -> None:
        self._wait_described()
        MlflowClient().set_tag(self.run.info.run_id, schema.TAG_STOPPED_AT_EPOCH, str(epoch))

    def _log_artifacts(self, model: nn.Module) -> str:
        """Uploads the final model's artifacts; returns the logged model's id."""
        config = {"config": self.config.to_params(), schema.TAG_TRIAL_KEY: self.config.trial_key()}
        # Both files in one upload: each separate log_* call would first fetch the run.
        with tempfile.TemporaryDirectory(prefix="cifar-mlflow-artifacts-") as folder:
            (Path(folder) / schema.CONFIG_ARTIFACT).write_text(json.dumps(config, indent=2))
            figure_path = Path(folder) / schema.WEIGHTS_FIGURE_ARTIFACT
            figure_path.parent.mkdir(parents=True, exist_ok=True)
            weights_figure(model, self.config.model).savefig(figure_path)
            MlflowClient().log_artifacts(self.run.info.run_id, folder)
        arrays = self._description_args[0]
        example = np.ascontiguousarray(arrays.test_images[:INPUT_EXAMPLE_IMAGES])
        return log_model(self.run, model, arrays.class_names, example, self.config.to_params())

    def _log_metrics(
        self, values: Mapping[str, float], step: int, model_id: str | None = None
    ) -> None:
        self._metrics.write(values, step, model_id)  # sent by the writer's thread


def log_model(
    run: Run,
    model: nn.Module,
    class_names: Sequence[str],
    input_example: np.ndarray,
    params: Mapping[str, str],
) -> str:
    """Log `model` as an `ImageClassifier` output of `run`; returns the logged model's id.

    The logged model takes RGB uint8 images (N, 32, 32, 3) and answers each with its class
    name and the probabilities of `class_names` (the normalisation is inside), with a declared
    signature and `input_example` (real images of the data set) for `mlflow models serve`.
    `mlflow.pyfunc.load_model` loads it without this project installed, under the Python
    minor version in its python_env.yaml: the classifier and the network's classes are pickled
    by value (shipping the package as code instead would upload each of its files
    separately), so they are copies, not those of `cifar_mlflow`. The trained `nn.Module` is
    the loaded model's `unwrap_python_model().network`.

    Called from a thread without an active run, `mlflow.pyfunc.log_model` only fills the
    model created here; linking it to `run` is then one request, where MLflow would fetch the
    run twice and copy the history of every metric onto the model, a request per metric.
    """
    classifier = ImageClassifier(copy.deepcopy(model).float().cpu(), class_names)
    logged = mlflow.initialize_logged_model(
        name=schema.MODEL_NAME,
        source_run_id=run.info.run_id,
        params=dict(params),
        experiment_id=run.info.experiment_id,
    )
    with contextlib.ExitStack() as by_value:
        # Models registered from outside the package (CIFAR_MLFLOW_MODELS) go by value too.
        for package in (cifar_mlflow, *extra_modules()):
            by_value.enter_context(classes_pickled_by_value(package))
        mlflow.pyfunc.log_model(
            name=schema.MODEL_NAME,
            python_model=classifier,
            model_id=logged.model_id,
            signature=model_signature(class_names),
            input_example=input_example,
            metadata=model_metadata(class_names),
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
