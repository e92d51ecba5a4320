"""One writer of the saturated-server test: a run's 30 epochs through `MlflowCallback`.

Run as `python -m tests.metric_writer_worker RUN_ID EPOCHS`, with MLflow pointed at the server.
The run is fetched with MLflow's retries; the epochs are logged with `MAX_RETRIES`.
"""

from __future__ import annotations

import os
import sys

import mlflow
from mlflow import MlflowClient

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.schema import EpochMetrics
from cifar_mlflow.tracking.callback import MlflowCallback


def epoch_metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=1.0 / epoch,
        train_acc=epoch / 100,
        valid_loss=2.0 / epoch,
        valid_acc=epoch / 200,
        epoch_time_s=0.1,
        lr=0.01,
    )


def main(run_id: str, epochs: int) -> None:
    run = MlflowClient().get_run(run_id)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = os.environ["WRITER_MAX_RETRIES"]
    # The description (tags, params, data set) is not what this test is about: not entered.
    callback = MlflowCallback(run, TrainConfig(), None, study="delivery", env=None)
    try:
        for epoch in range(1, epochs + 1):
            callback.on_epoch_end(epoch_metrics(epoch))
    finally:
        callback.__exit__(None, None, None)
        mlflow.flush_async_logging()  # what ending the run does


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
