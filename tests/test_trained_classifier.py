"""Serving and `predict` answer right on a trained model whose right answers are known (issue 22).

A set anyone can separate — each class a solid colour, with pixel noise in training — is
learnt to near-perfect accuracy in seconds; the logged model then classifies PNG files of
those colours through the three doors a user has: `mlflow.pyfunc.load_model` on the
files, `python -m cifar_mlflow predict` on the files, and `mlflow models serve` over HTTP.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from PIL import Image

from benchmarks.plain_server import model_server
from cifar_mlflow import cifar_pickle, schema
from cifar_mlflow.cifar_pickle import CIFAR_FOLDER, TRAIN_BATCHES
from cifar_mlflow.classifier import IMAGE_COLUMN
from cifar_mlflow.cli import main
from tests.test_serving import png_request

COLOURS = {
    "red": (230, 20, 20),
    "green": (20, 200, 40),
    "blue": (20, 40, 230),
    "yellow": (240, 230, 30),
    "magenta": (220, 30, 220),
    "cyan": (30, 220, 230),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "orange": (250, 140, 0),
}
NAMES = tuple(COLOURS)
PER_CLASS_AND_BATCH = 10


def noisy_solid_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 32, 32, 3) uint8: each image its class's colour plus noise of ±12 per pixel."""
    colours = np.array([COLOURS[name] for name in NAMES], dtype=np.int16)[labels]
    noise = rng.integers(-12, 13, size=(len(labels), 32, 32, 3))
    return np.clip(colours[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with path.open("wb") as handle:
        cifar_pickle.dump_python2({"data": data, "labels": labels.tolist()}, handle)


def write_colour_set(folder: Path) -> None:
    """The colour classes in CIFAR-10's python layout, named in its batches.meta."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(NAMES)), PER_CLASS_AND_BATCH)
    for name in (*TRAIN_BATCHES, "test_batch"):
        order = rng.permutation(labels)
        write_batch(folder / name, noisy_solid_images(order, rng), order)
    with (folder / "batches.meta").open("wb") as handle:
        cifar_pickle.dump_python2({"label_names": list(NAMES)}, handle)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    """The model URI of an MLP trained on the colour set, and the tracking variables."""
    folder = tmp_path_factory.mktemp("colours")
    write_colour_set(folder / "data" / CIFAR_FOLDER)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    mp = pytest.MonkeyPatch()
    for name, value in env.items():
        mp.setenv(name, value)
    mp.chdir(folder)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--data-dir", "data", "--checkpoint-dir", "ck", "--model", "mlp",
                  "--hidden-sizes", "64", "--optimizer", "adam", "--lr", "0.003", "--epochs", "4",
                  "--batch-size", "32", "--experiment", "colours"])  # fmt: skip
        assert exit_info.value.code in (0, None)
        (run,) = MlflowClient().search_runs(
            [MlflowClient().get_experiment_by_name("colours").experiment_id]
        )
        assert run.data.metrics[schema.METRIC_TEST_ACC] >= 0.99, run.data.metrics
        (logged,) = MlflowClient().search_logged_models([run.info.experiment_id])
        yield f"models:/{logged.model_id}", env
    finally:
        mp.undo()


@pytest.fixture
def colour_files(tmp_path: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Two PNG files per colour (plain and noisy), their pixels and their right classes."""
    rng = np.random.default_rng(1)
    labels = np.tile(np.arange(len(NAMES)), 2)
    pixels = noisy_solid_images(labels, rng)
    pixels[: len(NAMES)] = np.array([COLOURS[name] for name in NAMES])[:, None, None, :]
    paths = [tmp_path / f"{i:02d}-{NAMES[label]}.png" for i, label in enumerate(labels)]
    for path, image in zip(paths, pixels, strict=True):
        Image.fromarray(image).save(path)
    return paths, pixels, [NAMES[label] for label in labels]


@pytest.fixture
def tracked(trained_model, monkeypatch: pytest.MonkeyPatch) -> str:
    uri, env = trained_model
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return uri


@pytest.mark.e2e
def test_loaded_in_process_it_names_each_colour(tracked, colour_files):
    paths, _, right = colour_files
    files = pd.DataFrame({IMAGE_COLUMN: [path.read_bytes() for path in paths]})
    answered = mlflow.pyfunc.load_model(tracked).predict(files)
    assert list(answered["class"]) == right


@pytest.mark.e2e
def test_the_predict_command_names_each_colour_file(tracked, colour_files, capsys):
    paths, _, right = colour_files
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", tracked, *map(str, paths)])
    assert exit_info.value.code in (0, None)
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == list(map(str, paths))
    assert [line[1] for line in lines] == right


@pytest.mark.e2e
def test_served_over_http_it_names_each_colour(tracked, colour_files, tmp_path):
    paths, _, right = colour_files
    # What a client sends: the files as read, base64-encoded in JSON.
    request = png_request([path.read_bytes() for path in paths])
    # The scoring server runs `uvicorn` by name: the one beside this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with model_server(tracked, tmp_path, {**os.environ, "PATH": path}) as (url, _):
        response = requests.post(f"{url}/invocations", json=request, timeout=60)
    assert response.status_code == 200, response.text
    assert [row["class"] for row in response.json()["predictions"]] == right
