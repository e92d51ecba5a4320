"""Hand-made runs with a logged `ImageClassifier`: registry and prediction tests in seconds.

A trial here is a finished run with the metrics a sweep ranks by and, unless it stopped
early, a small linear classifier logged as training logs one.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from torch import nn

from cifar_mlflow import schema
from cifar_mlflow.data import CLASS_NAMES
from cifar_mlflow.tracking.model_logging import log_model

STUDY = "tiny"


def linear_network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, len(CLASS_NAMES)))


def example_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def sweep_parent(experiment_id: str, reused: tuple[str, ...] = ()) -> str:
    tags = {
        schema.TAG_ROLE: schema.ROLE_SWEEP,
        schema.TAG_STUDY: STUDY,
        schema.TAG_REUSED_RUN_IDS: ",".join(reused),
    }
    run = MlflowClient().create_run(experiment_id, run_name=STUDY, tags=tags)
    MlflowClient().set_terminated(run.info.run_id)
    return run.info.run_id


def trial(
    experiment_id: str,
    parent_run_id: str | None,
    best_valid_acc: float,
    test_acc: float,
    with_model: bool = True,
) -> str:
    """A FINISHED trial of `parent_run_id` (None: a run outside any sweep); returns its id."""
    client = MlflowClient()
    tags = {
        schema.TAG_STUDY: STUDY if parent_run_id else schema.NO_STUDY,
        schema.TAG_MODEL: "mlp",
        schema.TAG_TRIAL_KEY: uuid.uuid4().hex[:16],
    }
    if parent_run_id:
        tags[schema.TAG_PARENT_RUN_ID] = parent_run_id
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    metrics = {"best_valid_acc": best_valid_acc, "test_acc": test_acc}
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()],
        tags=[RunTag("mlflow.runName", f"trial-{best_valid_acc}")],
    )
    if with_model:
        example = example_images(2)
        log_model(client.get_run(run_id), linear_network(), CLASS_NAMES, example, {"lr": "0.1"})
    client.set_terminated(run_id)
    return run_id
