"""`mlflow models serve` of a registered champion answers images with predictions (issue 15)."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from benchmarks.plain_server import model_server
from cifar_mlflow.cifar_pickle import CLASS_NAMES
from cifar_mlflow.cli import main
from cifar_mlflow.registry import register_sweep_champion
from cifar_mlflow.tracking.model_logging import encoded_images
from tests.classifier_runs import STUDY, colour_images, sweep_parent, trial

URI = f"models:/cifar10-{STUDY}@champion"


def register_champion() -> None:
    experiment_id = MlflowClient().create_experiment("serving")
    parent = sweep_parent(experiment_id)
    trial(experiment_id, parent, best_valid_acc=0.5, test_acc=0.5)
    register_sweep_champion(STUDY, parent)


def png_request(files: list[bytes]) -> dict:
    """The JSON body docs/serving.md's curl command sends: the files, base64-encoded."""
    encoded = [[base64.b64encode(file).decode()] for file in files]
    return {"dataframe_split": {"columns": ["image"], "data": encoded}}


def check_answers(url: str, model: mlflow.pyfunc.PyFuncModel) -> None:
    """PNG files posted over HTTP get the model's answers: their trained classes."""
    pixels, labels = colour_images(1, seed=3)
    answered = served_answers(url, model, pixels)
    assert [row["class"] for row in answered] == [CLASS_NAMES[label] for label in labels]


def served_answers(url: str, model: mlflow.pyfunc.PyFuncModel, pixels: np.ndarray) -> list[dict]:
    """`pixels` posted over HTTP as PNG files: the answers, which equal the in-process model's;
    a file that is not an image gets a 400."""
    files = encoded_images(pixels)["image"].tolist()
    response = requests.post(f"{url}/invocations", json=png_request(files), timeout=60)
    assert response.status_code == 200, response.text
    answered = response.json()["predictions"]
    expected = model.predict(pd.DataFrame({"image": files})).to_dict(orient="records")
    for row, want in zip(answered, expected, strict=True):
        assert set(row) == set(want)
        assert [row[k] for k in want if k != "class"] == pytest.approx(
            [want[k] for k in want if k != "class"], abs=1e-6
        )
    refused = requests.post(
        f"{url}/invocations", json=png_request([files[0], b"not an image"]), timeout=60
    )
    assert refused.status_code == 400
    assert "image 1 is not an image file PIL can read" in refused.text
    return answered


@pytest.mark.e2e
def test_served_champion_answers_png_files_with_their_classes(tracking_store: str, tmp_path: Path):
    register_champion()
    model = mlflow.pyfunc.load_model(URI)
    with model_server(URI, tmp_path) as (url, _):
        check_answers(url, model)


@pytest.mark.e2e
def test_a_reader_of_the_team_server_loads_and_serves_the_champion_but_cannot_register(
    server_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    register_champion()  # as the admin
    uri = server_env["MLFLOW_TRACKING_URI"]
    ca = server_env["MLFLOW_TRACKING_SERVER_CERT_PATH"]  # the team server's own CA
    admin = (server_env["MLFLOW_TRACKING_USERNAME"], server_env["MLFLOW_TRACKING_PASSWORD"])
    username, password = f"reader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    created = requests.post(
        f"{uri}/api/2.0/mlflow/users/create",
        json={"username": username, "password": password},
        auth=admin,
        timeout=30,
        verify=ca,
    )
    assert created.status_code == 200, created.text
    # No grant: the server's default permission, READ, is all this user has.
    reader_env = {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
    for name, value in reader_env.items():
        monkeypatch.setenv(name, value)

    model = mlflow.pyfunc.load_model(URI)
    with model_server(URI, tmp_path, {**os.environ, **reader_env}) as (url, _):
        check_answers(url, model)

    champion = MlflowClient().get_model_version_by_alias(f"cifar10-{STUDY}", "champion")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["register", "--run-id", champion.run_id])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"Error: not allowed to register versions of cifar10-{STUDY} on {uri}")
    versions = requests.get(
        f"{uri}/api/2.0/mlflow/model-versions/search",
        params={"filter": f"name = 'cifar10-{STUDY}'"},
        auth=(username, password),
        timeout=30,
        verify=ca,
    )
    assert [v["version"] for v in versions.json()["model_versions"]] == ["1"]
    direct = requests.post(
        f"{uri}/api/2.0/mlflow/model-versions/create",
        json={"name": f"cifar10-{STUDY}", "source": champion.source, "run_id": champion.run_id},
        auth=(username, password),
        timeout=30,
        verify=ca,
    )
    assert direct.status_code == 403
