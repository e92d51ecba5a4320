"""Shared fixtures: every test tracks into its own temporary SQLite store, never the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store; the test runs in `tmp_path` with MLflow pointed at it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cifar10")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri
