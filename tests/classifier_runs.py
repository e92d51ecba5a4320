"""Hand-made runs with a logged classifier whose answers are known: registry, prediction and
serving tests in seconds.

A trial here is a finished run with the metrics a sweep ranks by and, unless it stopped
early, the project's MLP trained on `colour_images` (each class one hue, with a little noise:
separable, so the model names each image's class) and logged as training logs one.
"""

from __future__ import annotations

import colorsys
import functools
import uuid

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from torch import nn

from cifar_mlflow import schema
from cifar_mlflow.cifar_pickle import CLASS_NAMES
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import normalise
from cifar_mlflow.models import build_model
from cifar_mlflow.tracking.model_logging import log_model

STUDY = "tiny"
NOISE = 12  # ± per pixel and channel


def colour_images(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (10 × per_class, 32, 32, 3), class k a solid hue k/10 plus noise; labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
    hues = np.array([colorsys.hsv_to_rgb(k / len(CLASS_NAMES), 0.8, 0.9) for k in labels])
    noise = rng.integers(-NOISE, NOISE + 1, (len(labels), 32, 32, 3))
    pixels = np.clip(hues[:, None, None, :] * 255 + noise, 0, 255).astype(np.uint8)
    return pixels, labels


@functools.cache
def trained_network() -> nn.Module:
    """The project's MLP (one hidden layer of 16), trained until it names every training image."""
    torch.manual_seed(0)
    network = build_model(TrainConfig.from_overrides({"model": "mlp", "hidden_sizes": (16,)}))
    pixels, labels = colour_images(20)
    inputs, targets = normalise(torch.from_numpy(pixels)), torch.from_numpy(labels)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(40):
        optimiser.zero_grad()
        nn.functional.cross_entropy(network(inputs), targets).backward()
        optimiser.step()
    network.eval()
    with torch.no_grad():
        assert (network(inputs).argmax(dim=1) == targets).all(), "the colours were not learnt"
    return network


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
    seed_group: str | None = None,
) -> str:
    """A FINISHED trial of `parent_run_id` (None: a run outside any sweep); returns its id.

    Trials with the same `seed_group` are seeds of one setting (tag `seed_group`)."""
    client = MlflowClient()
    tags = {
        schema.TAG_STUDY: STUDY if parent_run_id else schema.NO_STUDY,
        schema.TAG_MODEL: "mlp",
        schema.TAG_TRIAL_KEY: uuid.uuid4().hex[:16],
    }
    if parent_run_id:
        tags[schema.TAG_PARENT_RUN_ID] = parent_run_id
    if seed_group:
        tags[schema.TAG_SEED_GROUP] = seed_group
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    metrics = {schema.METRIC_BEST_VALID_ACC: best_valid_acc, schema.METRIC_TEST_ACC: test_acc}
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()],
        tags=[RunTag(schema.TAG_RUN_NAME, f"trial-{best_valid_acc}")],
    )
    if with_model:
        example, _ = colour_images(1)
        run = client.get_run(run_id)
        log_model(run, trained_network(), CLASS_NAMES, example[:2], {"lr": "0.1"})
    client.set_terminated(run_id)
    return run_id
