"""The team tracking server run for real: authentication, concurrent logging, the CLI,
backups. The e2e tests start PostgreSQL and `mlflow server` through `cifar_mlflow.server`,
which runs the entrypoint script of the Docker image (`docker/mlflow-server.sh`); the compose
file and images are checked in test_server_deployment.py, the attacks in
test_server_security.py.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import re
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.schema import EPOCH_METRICS, EpochMetrics
from cifar_mlflow.server.backup import backup
from cifar_mlflow.server.cli import server
from cifar_mlflow.server.launcher import TrackingServer
from cifar_mlflow.server.postgres import ServerError, free_port
from cifar_mlflow.tracking.callback import MlflowCallback
from cifar_mlflow.tracking.runs import training_run

REPO = Path(__file__).resolve().parent.parent
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY")
EPOCHS = 30
WORKERS = 8
CLIENT_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)


@pytest.mark.e2e
def test_rest_api_refuses_requests_without_valid_credentials(
    tracking_server: TrackingServer,
) -> None:
    url = f"{tracking_server.uri}/api/2.0/mlflow/experiments/search"
    params = {"max_results": 1}
    ca = tracking_server.ca_file
    assert requests.get(url, params=params, verify=ca, timeout=30).status_code == 401
    wrong = (tracking_server.admin_username, "not-the-password")
    assert requests.get(url, params=params, auth=wrong, verify=ca, timeout=30).status_code == 401
    admin = (tracking_server.admin_username, tracking_server.admin_password)
    assert requests.get(url, params=params, auth=admin, verify=ca, timeout=30).status_code == 200


@pytest.mark.e2e
def test_a_reader_cannot_create_runs(server_env: dict[str, str]) -> None:
    uri = server_env["MLFLOW_TRACKING_URI"]
    ca = server_env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    experiment_id = MlflowClient().create_experiment(server_env["MLFLOW_EXPERIMENT_NAME"])
    username, password = f"reader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = (server_env["MLFLOW_TRACKING_USERNAME"], server_env["MLFLOW_TRACKING_PASSWORD"])
    # Over REST, as docs/team-server.md shows; MLflow's AuthServiceClient would also import the
    # whole auth server into every process this module is loaded in.
    for endpoint, body in (
        ("2.0/mlflow/users/create", {"username": username, "password": password}),
        (
            "3.0/mlflow/users/permissions/grant",
            {
                "username": username,
                "resource_type": "experiment",
                "resource_id": experiment_id,
                "permission": "READ",
            },
        ),
    ):
        response = requests.post(
            f"{uri}/api/{endpoint}", json=body, auth=admin, verify=ca, timeout=30
        )
        assert response.status_code == 200, response.text

    reader = (username, password)
    experiment = requests.get(
        f"{uri}/api/2.0/mlflow/experiments/get",
        params={"experiment_id": experiment_id},
        auth=reader,
        verify=ca,
        timeout=30,
    )
    assert experiment.status_code == 200
    created = requests.post(
        f"{uri}/api/2.0/mlflow/runs/create",
        json={"experiment_id": experiment_id},
        auth=reader,
        verify=ca,
        timeout=30,
    )
    assert created.status_code == 403
    assert MlflowClient().search_runs([experiment_id]) == []


def log_epochs(experiment: str, worker: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    """One training process: a run whose epochs go through the project's own logging path.

    `training_run` starts the run as training does; `MlflowCallback.on_epoch_end` queues one
    batched request per epoch for MLflow's background thread; ending the run drains the queue.
    """
    with training_run(TrainConfig(seed=worker), experiment=experiment) as run:
        tracker = MlflowCallback(run, TrainConfig(), arrays=None, study="none", env=None)
        barrier.wait(timeout=120)
        for epoch in range(1, EPOCHS + 1):
            values = {name: expected(worker, epoch, i) for i, name in enumerate(EPOCH_METRICS)}
            tracker.on_epoch_end(EpochMetrics(epoch=epoch, **values))


def expected(worker: int, epoch: int, metric: int) -> float:
    return worker * 1000 + epoch + metric / 8


@pytest.mark.e2e
def test_concurrent_processes_lose_no_metric(server_env: dict[str, str]) -> None:
    client = MlflowClient()
    experiment = server_env["MLFLOW_EXPERIMENT_NAME"]
    experiment_id = client.create_experiment(experiment)
    # Spawned, not forked: each worker is a fresh interpreter, like a sweep's trials.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    workers = [
        context.Process(target=log_epochs, args=(experiment, worker, barrier))
        for worker in range(WORKERS)
    ]
    try:
        for process in workers:
            process.start()
        for process in workers:
            process.join(timeout=300)
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in workers] == [0] * WORKERS

    runs = client.search_runs([experiment_id])
    names = [TrainConfig(seed=worker).run_name() for worker in range(WORKERS)]
    assert sorted(run.info.run_name for run in runs) == sorted(names)
    for run in runs:
        worker = names.index(run.info.run_name)
        assert run.info.status == "FINISHED"
        for i, name in enumerate(EPOCH_METRICS):
            history = client.get_metric_history(run.info.run_id, name)
            points = sorted((metric.step, metric.value) for metric in history)
            assert points == [(e, expected(worker, e, i)) for e in range(1, EPOCHS + 1)], name


def start_with_cli(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, *options: str
) -> dict[str, str]:
    """`server start`, with its printed lines evaluated by a shell, as `eval "$(...)"` does."""
    arguments = ["start", "--data-dir", str(data_dir), "--port", str(free_port()), *options]
    result = CliRunner().invoke(server, arguments)
    assert result.exit_code == 0, result.output
    script = result.stdout + "".join(f'printf "%s\\0" "${name}"\n' for name in CLIENT_VARIABLES)
    evaluated = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    env = dict(zip(CLIENT_VARIABLES, evaluated.stdout.split("\0")[:-1], strict=True))
    assert env["MLFLOW_TRACKING_URI"].startswith("https://127.0.0.1:")
    assert env["MLFLOW_TRACKING_PASSWORD"], "the password file must be read when evaluated"
    assert env["MLFLOW_TRACKING_PASSWORD"] not in result.output, "the password must not be printed"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.e2e
def test_backup_wipe_restore_brings_back_runs_users_and_artifacts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, own_server_dir: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    data_dir = own_server_dir
    first = start_with_cli(data_dir, monkeypatch)
    client = MlflowClient()
    experiment_id = client.create_experiment("restore")
    run_id = client.create_run(experiment_id, run_name="before-backup").info.run_id
    client.log_param(run_id, "lr", "0.001")
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(schema.METRIC_VALID_ACC, s / 10, now, s) for s in (1, 2, 3)]
    )
    (tmp_path / "config.json").write_text('{"lr": 0.001}')
    client.log_artifact(run_id, str(tmp_path / "config.json"))
    client.set_terminated(run_id)
    member = ("member", uuid.uuid4().hex + uuid.uuid4().hex)
    grant = {"username": "member", "resource_type": "experiment", "resource_id": experiment_id}
    as_admin(first, "POST", "2.0/mlflow/users/create",
             {"username": member[0], "password": member[1]})  # fmt: skip
    as_admin(first, "POST", "3.0/mlflow/users/permissions/grant", {**grant, "permission": "EDIT"})

    runner = CliRunner()
    inside = runner.invoke(server, ["backup", "--data-dir", str(data_dir), "--to", str(REPO / "b")])
    assert inside.exit_code == 2
    assert "inside the git work tree" in inside.output
    assert not (REPO / "b").exists()
    backup_dir = tmp_path / "backup"
    saved = runner.invoke(server, ["backup", "--data-dir", str(data_dir), "--to", str(backup_dir)])
    assert saved.exit_code == 0, saved.output
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in backup_dir.iterdir()} == {
        name: 0o600
        for name in ("mlflow.dump", "mlflow_auth.dump", "artifacts.tar.gz", "secrets.tar.gz")
    }
    assert runner.invoke(server, ["stop", "--data-dir", str(data_dir)]).exit_code == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{first['MLFLOW_TRACKING_URI']}/health", verify=False, timeout=5)

    shutil.rmtree(data_dir)
    restored = runner.invoke(
        server, ["restore", "--data-dir", str(data_dir), "--from", str(backup_dir)]
    )
    assert restored.exit_code == 0, restored.output
    # On another port, with the operator's certificate: what a run refers to must not depend
    # on where the server listens.
    ours = tmp_path / "certificate"
    assert runner.invoke(server, ["certificate", "--out", str(ours)]).exit_code == 0
    second = start_with_cli(
        data_dir, monkeypatch, "--tls-cert", str(ours / "server.pem"),
        "--tls-key", str(ours / "server-key.pem"), "--tls-ca", str(ours / "ca.pem"),
    )  # fmt: skip
    assert Path(second["MLFLOW_TRACKING_SERVER_CERT_PATH"]).read_text() == (
        (ours / "ca.pem").read_text()
    )
    assert second["MLFLOW_TRACKING_PASSWORD"] == first["MLFLOW_TRACKING_PASSWORD"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.001"}
    history = client.get_metric_history(run_id, schema.METRIC_VALID_ACC)
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    downloaded = client.download_artifacts(run_id, "config.json", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == '{"lr": 0.001}'
    permissions = as_admin(second, "GET", "3.0/mlflow/users/permissions/list?username=member")
    assert {(p["resource_pattern"], p["permission"]) for p in permissions["permissions"]} == {
        (experiment_id, "EDIT")
    }
    with_her_password = requests.post(
        f"{second['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/create",
        json={"experiment_id": experiment_id},
        auth=member,
        verify=second["MLFLOW_TRACKING_SERVER_CERT_PATH"],
        timeout=30,
    )
    assert with_her_password.status_code == 200, with_her_password.text
    # The admin exists: its password no longer reaches the server.
    state = json.loads((data_dir / "server.json").read_text())
    processes = [psutil.Process(state["pid"]), *psutil.Process(state["pid"]).children(True)]
    assert not [p for p in processes if "MLFLOW_AUTH_ADMIN_PASSWORD" in str(p.environ())]


def as_admin(env: dict[str, str], method: str, endpoint: str, body: dict | None = None) -> dict:
    response = requests.request(
        method,
        f"{env['MLFLOW_TRACKING_URI']}/api/{endpoint}",
        json=body,
        auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
        verify=env["MLFLOW_TRACKING_SERVER_CERT_PATH"],
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.e2e
def test_cli_refuses_user_mistakes_with_status_2(
    tracking_server: TrackingServer, tmp_path: Path
) -> None:
    runner = CliRunner()
    again = runner.invoke(server, ["start", "--data-dir", str(tracking_server.data_dir)])
    assert again.exit_code == 2
    assert "already running" in again.output
    port = tracking_server.uri.rsplit(":", 1)[1]
    busy = runner.invoke(server, ["start", "--data-dir", str(tmp_path / "new"), "--port", port])
    assert busy.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in busy.output
    assert not (tmp_path / "new").exists()
    idle = runner.invoke(server, ["stop", "--data-dir", str(tmp_path)])
    assert idle.exit_code == 2
    assert f"no server is running from {tmp_path}" in idle.output


def test_cli_help() -> None:
    for command in ([], ["start"], ["stop"], ["backup"], ["restore"], ["certificate"]):
        result = CliRunner().invoke(server, [*command, "-h"])
        assert result.exit_code == 0
        assert "Usage:" in result.output


@pytest.mark.parametrize("inside", [".", "backups/monday", "docker/../b"])
def test_a_backup_inside_the_checkout_is_refused(tmp_path: Path, inside: str) -> None:
    with pytest.raises(ServerError, match="inside the git work tree"):
        backup(tmp_path, REPO / inside)
    assert not (REPO / "backups").exists()
