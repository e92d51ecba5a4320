"""Shared fixtures: every test tracks into its own temporary SQLite store, never the checkout."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.tracking import fluent

pytest_plugins = ("tests.fixtures.server",)


@pytest.fixture(autouse=True)
def isolated_mlflow_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MLflow state leaks between tests.

    `mlflow.set_experiment` records the experiment in `os.environ` and in a module variable;
    a later test with another store would otherwise resolve that id in the wrong database.
    """
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, already migrated SQLite store: creating one costs seconds, copying it not."""
    folder = tmp_path_factory.mktemp("template")
    cwd = Path.cwd()
    os.chdir(folder)  # the Default experiment's artifact folder is resolved from here
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(cwd)
    return folder / "mlflow.db"


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_db: Path) -> str:
    """A fresh SQLite tracking store; the test runs in `tmp_path` with MLflow pointed at it."""
    shutil.copyfile(migrated_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cifar10")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri


@pytest.fixture(scope="session")
def small_synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `data_dir` whose `dataset=synthetic` is a small set (640 train, 200 test images).

    Evaluation over the default 1,000 test and 500 valid images dominates the time of tiny
    end-to-end trials on a CPU; the loader takes whatever set lies in the folder.
    """
    from cifar_mlflow.cifar_pickle import CIFAR_FOLDER
    from cifar_mlflow.synthetic import write_synthetic_cifar

    data_dir = tmp_path_factory.mktemp("small-data")
    write_synthetic_cifar(data_dir / "synthetic" / CIFAR_FOLDER, train_size=640, test_size=200)
    return data_dir
