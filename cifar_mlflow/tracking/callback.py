"""The engine's reports as MLflow calls: the run's description, epochs, final model."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from torch import nn

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays
from cifar_mlflow.engine import Callback
from cifar_mlflow.environment import Environment
from cifar_mlflow.schema import EpochMetrics, FinalMetrics
from cifar_mlflow.tracking.metric_writer import MetricWriter
from cifar_mlflow.tracking.model_logging import log_model
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

    def on_train_stopped(self, epoch: int, reason: str) -> None:
        self._wait_described()
        tags = {schema.TAG_STOPPED_AT_EPOCH: str(epoch), schema.TAG_STOPPED_REASON: reason}
        MlflowClient().log_batch(
            self.run.info.run_id, tags=[RunTag(key, value) for key, value in tags.items()]
        )

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
