"""Credentials in the tracking URI work and are never printed.

`MLFLOW_TRACKING_URI=http://user:password@host:port` against the real team server (basic
auth): training, a sweep and the report work with only that URI, and no output line (progress,
run link, MLflow's own lines, the report) carries the password; nor does the error line when
the server cannot be reached.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote, urlsplit

import pytest
from mlflow import MlflowClient

from analysis import report
from cifar_mlflow.cli import main as cifar_main
from cifar_mlflow.server.postgres import free_port
from cifar_mlflow.tracking.client import CLIENT_CREDENTIAL_VARIABLES
from tests.test_console import TINY
from tests.test_sweep import folders

ONE_TRIAL = "model: mlp\ngrid:\n  lr: [0.01]\n"


def uri_with(uri: str, username: str, password: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(
        netloc=f"{quote(username)}:{quote(password, safe='')}@{parts.netloc}"
    ).geturl()


@pytest.fixture
def experiment(monkeypatch, tmp_path, tracking_server) -> str:
    """Only MLFLOW_TRACKING_URI, with the admin's credentials in it, and a new experiment."""
    for name in CLIENT_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # also restores what the commands set
    uri = uri_with(
        tracking_server.uri, tracking_server.admin_username, tracking_server.admin_password
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tracking_server.ca_file))
    name = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    return name


def exit_status(command, args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        command(args)
    return exit_info.value.code


@pytest.mark.e2e
def test_train_sweep_and_report_work_with_credentials_in_the_uri_and_never_print_them(
    experiment, tracking_server, small_synthetic_dir, tmp_path, capfd
):
    password = tracking_server.admin_password
    assert exit_status(cifar_main, ["train", *TINY, *folders(small_synthetic_dir)]) == 0
    study = tmp_path / "one.yaml"
    study.write_text(ONE_TRIAL)
    sweep = ["sweep", "--study", str(study), *TINY, *folders(small_synthetic_dir)]
    assert exit_status(cifar_main, sweep) == 0
    output = tmp_path / "report.html"
    analysis = ["--output", str(output), "--experiment", experiment]
    assert exit_status(lambda args: report.main.main(args), analysis) == 0

    printed = capfd.readouterr()
    assert "Finished mlp-" in printed.out and "Sweep one: 1 finished" in printed.out
    assert f"{tracking_server.uri}/#/experiments/" in printed.out  # the run links
    for text in (printed.out, printed.err, output.read_text()):
        assert password not in text and quote(password, safe="") not in text

    # Logged as the admin: the train run, the sweep and its trial.
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}


def test_an_unreachable_server_with_credentials_is_one_line_without_them(
    tracking_store, monkeypatch, capsys
):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pw@127.0.0.1:{port}")
    for name in CLIENT_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    assert exit_status(cifar_main, ["train", "--dataset", "synthetic"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"Error: tracking server http://127.0.0.1:{port} is unreachable")
    assert "s3cret" not in line and "alice" not in line
