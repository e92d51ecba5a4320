"""The logged model on raw images (issue 15): what it takes, what it answers, where it loads."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from cifar_mlflow.cifar_pickle import CIFAR_FOLDER
from cifar_mlflow.classifier import ImageClassifier, model_signature
from cifar_mlflow.cli import main
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import read_cifar_folder, to_device
from tests.classifier_runs import example_images, linear_network, trial


def test_the_classifier_normalises_raw_images_as_training_does(small_synthetic_dir: Path):
    arrays = read_cifar_folder(small_synthetic_dir / "synthetic" / CIFAR_FOLDER)
    network = linear_network()
    answered = ImageClassifier(network, arrays.class_names).predict(None, arrays.test_images)

    trained_on = to_device(arrays, TrainConfig(dataset="synthetic"), torch.device("cpu"))
    with torch.no_grad():
        expected = torch.softmax(network(trained_on.test.images), dim=1).numpy()
    assert list(answered.columns) == ["class", *arrays.class_names]
    np.testing.assert_allclose(answered[list(arrays.class_names)], expected, rtol=1e-5, atol=1e-7)
    names = np.asarray(arrays.class_names)
    assert (answered["class"].to_numpy() == names[expected.argmax(axis=1)]).all()


def test_the_signature_declares_uint8_images_in_and_named_probabilities_out():
    signature = model_signature(("cat", "dog"))
    (images,) = signature.inputs.inputs
    assert (images.type, images.shape) == (np.dtype(np.uint8), (-1, 32, 32, 3))
    assert signature.outputs.input_names() == ["class", "cat", "dog"]
    assert [c.type.name for c in signature.outputs.inputs] == ["string", "double", "double"]


# Loads a logged model with `cifar_mlflow` unimportable: argv = model URI, folder.
LOAD_WITHOUT_PROJECT = """
import sys
sys.modules["cifar_mlflow"] = None
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(np.load(sys.argv[2] + "/images.npy")).to_pickle(sys.argv[2] + "/answer.pkl")
"""


def test_the_logged_model_loads_and_answers_without_the_project(tracking_store, tmp_path):
    run_id = trial(MlflowClient().create_experiment("load"), None, 0.5, 0.5)
    (logged,) = MlflowClient().search_logged_models(
        experiment_ids=[MlflowClient().get_run(run_id).info.experiment_id]
    )
    images = example_images(6, seed=2)
    np.save(tmp_path / "images.npy", images)
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PROJECT, logged.model_uri, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        check=True,
        capture_output=True,
    )
    elsewhere = pd.read_pickle(tmp_path / "answer.pkl")
    here = mlflow.pyfunc.load_model(logged.model_uri).predict(images)
    pd.testing.assert_frame_equal(elsewhere, here)


@pytest.mark.e2e
def test_the_class_names_are_those_of_the_data_set_the_run_trained_on(
    tracking_store, small_synthetic_dir: Path, tmp_path: Path
):
    data_dir = tmp_path / "data"
    shutil.copytree(small_synthetic_dir, data_dir)
    meta = data_dir / "synthetic" / CIFAR_FOLDER / "batches.meta"
    names = [f"kind-{index}" for index in range(10)]
    meta.write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    options = ["--dataset", "synthetic", "--data-dir", str(data_dir), "--epochs", "1"]
    options += ["--hidden-sizes", "32", "--checkpoint-dir", str(tmp_path / "ck")]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *options])
    assert exit_info.value.code == 0
    (run,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("cifar10").experiment_id]
    )
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    answered = model.predict(example_images(3))
    assert list(answered.columns) == ["class", *names]
    assert set(answered["class"]) <= set(names)
