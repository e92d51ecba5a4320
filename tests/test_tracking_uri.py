"""A tracking URI MLflow cannot log to is one line (the bad-input table runs `foo://`)."""

from __future__ import annotations

import pytest

from cifar_mlflow.errors import UserError
from cifar_mlflow.reachability import UnreachableServerError
from cifar_mlflow.tracking.client import check_tracking_server

REFUSED = ["foo://bar", "s3://bucket/mlruns", "ftp://127.0.0.1/x", "sqlit:///mlflow.db"]
# Every form MLflow's stores take that needs no server to be checked.
LOCAL_STORES = [
    "mlruns",
    "/tmp/mlruns",
    "./mlruns",
    "file:///tmp/mlruns",
    "sqlite:///mlflow.db",
    "sqlite:////tmp/mlflow.db",
]
# Database stores are only connected to when used: accepted here.
DATABASE_STORES = [
    "postgresql://alice@127.0.0.1:9/mlflow",
    "postgresql+psycopg2://alice@127.0.0.1:9/mlflow",
    "mysql://alice@127.0.0.1:9/mlflow",
    "mssql+pyodbc://alice@127.0.0.1:9/mlflow",
]


@pytest.mark.parametrize("uri", REFUSED)
def test_an_unknown_scheme_is_refused_in_one_line(monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError, match="has a scheme MLflow cannot log to") as error:
        check_tracking_server()
    assert "\n" not in str(error.value) and "http://" in str(error.value)


def test_the_refusal_leaves_credentials_out(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://alice:secret@127.0.0.1/x")
    with pytest.raises(UserError) as error:
        check_tracking_server()
    assert "secret" not in str(error.value)


@pytest.mark.parametrize("uri", LOCAL_STORES + DATABASE_STORES)
def test_every_store_mlflow_takes_passes(monkeypatch, tmp_path, uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    check_tracking_server()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "https://127.0.0.1:9/prefix"])
def test_a_server_uri_passes_the_scheme_check_and_is_then_checked_for_reachability(
    monkeypatch, uri
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UnreachableServerError):
        check_tracking_server()
