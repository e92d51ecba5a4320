"""The logged model (issues 15, 23): one model, two flavors — the network for
`mlflow.pytorch`, the image classifier for `mlflow.pyfunc` — wherever it is loaded from."""

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
from mlflow.exceptions import MlflowException

from cifar_mlflow.cifar_pickle import CIFAR_FOLDER, CLASS_NAMES
from cifar_mlflow.classifier import ImageClassifier
from cifar_mlflow.cli import main
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CIFAR_MEAN, CIFAR_STD, read_cifar_folder, to_device
from cifar_mlflow.registry import register_run, register_sweep_champion
from cifar_mlflow.tracking.model_logging import encoded_images, model_signature
from tests.classifier_runs import (
    STUDY,
    colour_images,
    sweep_parent,
    trained_network,
    trial,
)


def test_the_classifier_normalises_raw_images_as_training_does(small_synthetic_dir: Path):
    arrays = read_cifar_folder(small_synthetic_dir / "synthetic" / CIFAR_FOLDER)
    network = trained_network()
    classifier = ImageClassifier(network, arrays.class_names, CIFAR_MEAN, CIFAR_STD)
    answered = classifier.answer(arrays.test_images)

    trained_on = to_device(arrays, TrainConfig(dataset="synthetic"), torch.device("cpu"))
    with torch.no_grad():
        expected = torch.softmax(network(trained_on.test.images), dim=1).numpy()
    assert list(answered.columns) == ["class", *arrays.class_names]
    np.testing.assert_allclose(answered[list(arrays.class_names)], expected, rtol=1e-5, atol=1e-7)
    names = np.asarray(arrays.class_names)
    assert (answered["class"].to_numpy() == names[expected.argmax(axis=1)]).all()


def test_the_signature_declares_image_files_in_and_named_probabilities_out():
    signature = model_signature(("cat", "dog"))
    (images,) = signature.inputs.inputs
    assert (images.name, images.type.name) == ("image", "binary")
    assert signature.outputs.input_names() == ["class", "cat", "dog"]
    assert [c.type.name for c in signature.outputs.inputs] == ["string", "double", "double"]


@pytest.fixture
def champion_uris(tracking_store: str) -> list[str]:
    """The champion a sweep registered, and a version `register` added from its run."""
    experiment_id = MlflowClient().create_experiment("flavors")
    parent = sweep_parent(experiment_id)
    run_id = trial(experiment_id, parent, best_valid_acc=0.5, test_acc=0.5)
    register_sweep_champion(STUDY, parent)
    registered = register_run(run_id)
    return [f"models:/cifar10-{STUDY}@champion", f"models:/{registered.name}/{registered.version}"]


def test_a_registered_model_is_the_network_for_pytorch_and_the_classifier_for_pyfunc(
    champion_uris: list[str],
):
    pixels, labels = colour_images(3, seed=5)
    for uri in champion_uris:
        network = mlflow.pytorch.load_model(uri)
        assert type(network).__name__ == "MLP"
        for name, tensor in trained_network().state_dict().items():
            torch.testing.assert_close(network.state_dict()[name], tensor)
        elsewhere = mlflow.pytorch.load_model(uri, map_location="meta")  # any device
        assert {p.device.type for p in elsewhere.parameters()} == {"meta"}

        answered = mlflow.pyfunc.load_model(uri).predict(encoded_images(pixels))
        assert list(answered["class"]) == [CLASS_NAMES[label] for label in labels]


def test_a_file_that_is_not_an_image_is_refused_naming_it(champion_uris: list[str]):
    model = mlflow.pyfunc.load_model(champion_uris[0])
    files = encoded_images(colour_images(1)[0][:2])
    files.loc[1, "image"] = b"not an image"
    with pytest.raises(MlflowException, match="image 1 is not an image file PIL can read"):
        model.predict(files)


# Loads a logged model with `cifar_mlflow` unimportable: argv = model URI, folder.
LOAD_WITHOUT_PROJECT = """
import sys
sys.modules["cifar_mlflow"] = None
import mlflow, pandas as pd, torch
folder = sys.argv[2]
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_pickle(folder + "/files.pkl")).to_pickle(folder + "/answer.pkl")
network = mlflow.pytorch.load_model(sys.argv[1])
torch.save(network(torch.load(folder + "/inputs.pt")), folder + "/logits.pt")
"""


def test_the_logged_model_loads_and_answers_without_the_project(tracking_store, tmp_path):
    run_id = trial(MlflowClient().create_experiment("load"), None, 0.5, 0.5)
    (logged,) = MlflowClient().search_logged_models(
        experiment_ids=[MlflowClient().get_run(run_id).info.experiment_id]
    )
    files = encoded_images(colour_images(2, seed=2)[0])
    files.to_pickle(tmp_path / "files.pkl")
    inputs = torch.randn(4, 3, 32, 32)
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PROJECT, logged.model_uri, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        check=True,
        capture_output=True,
    )
    elsewhere = pd.read_pickle(tmp_path / "answer.pkl")
    here = mlflow.pyfunc.load_model(logged.model_uri).predict(files)
    pd.testing.assert_frame_equal(elsewhere, here)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), trained_network()(inputs))


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
    uri = f"runs:/{run.info.run_id}/model"
    answered = mlflow.pyfunc.load_model(uri).predict(encoded_images(colour_images(1)[0][:3]))
    assert list(answered.columns) == ["class", *names]
    assert set(answered["class"]) <= set(names)
    assert type(mlflow.pytorch.load_model(uri)).__name__ == "MLP"  # the network trained
