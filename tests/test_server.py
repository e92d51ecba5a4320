"""The team tracking server: the compose file, and the same configuration run for real.

The e2e tests start PostgreSQL and `mlflow server` through `cifar_mlflow.server`, which runs
the entrypoint script of the Docker image (`docker/mlflow-server.sh`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.schema import EPOCH_METRICS, EpochMetrics
from cifar_mlflow.server.cli import server
from cifar_mlflow.server.launcher import TrackingServer
from cifar_mlflow.server.postgres import free_port
from cifar_mlflow.tracking.callback import MlflowCallback
from cifar_mlflow.tracking.runs import training_run

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY")
EPOCHS = 30
WORKERS = 8


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def example_secrets() -> dict[str, str]:
    return {name: value for name, value in env_example().items() if SECRET_NAME.search(name)}


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


def test_compose_accepts_the_file_with_the_example_env(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    options = ["-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "--profile", "gpu"]
    result = subprocess.run(
        [*command, *options, "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"db", "mlflow", "trainer"}
    assert "ports" not in config["services"]["db"]
    # The secrets reach the containers from the env file, not from the compose file.
    secrets = example_secrets()
    assert (
        config["services"]["db"]["environment"]["POSTGRES_PASSWORD"]
        == (secrets["POSTGRES_PASSWORD"])
    )
    mlflow_env = config["services"]["mlflow"]["environment"]
    for name in ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert mlflow_env[name] == secrets[name]


def test_compose_publishes_only_mlflow_and_reads_every_secret_from_env() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert {name for name, service in services.items() if "ports" in service} == {"mlflow"}
    (mapping,) = services["mlflow"]["ports"]
    assert mapping.endswith(":5000")

    db = services["db"]
    assert "healthcheck" in db
    # Not even reachable from the outside through another service's network.
    assert all(compose["networks"][network].get("internal") for network in db["networks"])
    volume = db["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "PostgreSQL's data must live in a named volume"
    assert services["mlflow"]["depends_on"]["db"]["condition"] == "service_healthy"

    known = set(env_example())
    for service in services.values():
        for name, value in service.get("environment", {}).items():
            if SECRET_NAME.search(name):
                reference = re.fullmatch(r"\$\{(\w+)(:[?-][^}]*)?\}", str(value))
                assert reference, f"{name} must come from .env, not be written in the file"
                assert reference.group(1) in known, f"{reference.group(1)} is not in .env.example"


def test_server_image_pins_the_tested_mlflow_and_runs_the_shared_script() -> None:
    dockerfile = (REPO / "docker" / "server.Dockerfile").read_text()
    assert f'"mlflow[auth]=={mlflow.__version__}"' in dockerfile
    assert "psycopg2-binary==" in dockerfile
    assert 'ENTRYPOINT ["mlflow-server.sh"]' in dockerfile
    assert "COPY mlflow-server.sh " in dockerfile


def test_no_secret_from_env_example_is_in_the_repository() -> None:
    secrets = example_secrets()
    assert len(secrets) >= 3
    assert all(len(value) >= 12 for value in secrets.values()), "too short to search for"
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Untracked files that are not ignored count too: they are what the next commit adds.
    files = [REPO / name for name in listed.split("\0") if name and name != ".env.example"]
    assert files
    leaks = [
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        if path.is_file()
        for name, value in secrets.items()
        if value.encode() in path.read_bytes()
    ]
    assert not leaks
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", ".env"])
    assert ignored.returncode == 0, ".env must stay git-ignored"


@pytest.mark.e2e
def test_rest_api_refuses_requests_without_valid_credentials(
    tracking_server: TrackingServer,
) -> None:
    url = f"{tracking_server.uri}/api/2.0/mlflow/experiments/search"
    params = {"max_results": 1}
    assert requests.get(url, params=params, timeout=30).status_code == 401
    wrong = (tracking_server.admin_username, "not-the-password")
    assert requests.get(url, params=params, auth=wrong, timeout=30).status_code == 401
    admin = (tracking_server.admin_username, tracking_server.admin_password)
    assert requests.get(url, params=params, auth=admin, timeout=30).status_code == 200


@pytest.mark.e2e
def test_a_reader_cannot_create_runs(server_env: dict[str, str]) -> None:
    uri = server_env["MLFLOW_TRACKING_URI"]
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
        response = requests.post(f"{uri}/api/{endpoint}", json=body, auth=admin, timeout=30)
        assert response.status_code == 200, response.text

    reader = (username, password)
    experiment = requests.get(
        f"{uri}/api/2.0/mlflow/experiments/get",
        params={"experiment_id": experiment_id},
        auth=reader,
        timeout=30,
    )
    assert experiment.status_code == 200
    created = requests.post(
        f"{uri}/api/2.0/mlflow/runs/create",
        json={"experiment_id": experiment_id},
        auth=reader,
        timeout=30,
    )
    assert created.status_code == 403
    assert MlflowClient().search_runs([experiment_id]) == []


@pytest.mark.e2e
def test_an_unknown_host_header_is_refused(tracking_server: TrackingServer) -> None:
    url = f"{tracking_server.uri}/api/2.0/mlflow/experiments/search"
    admin = (tracking_server.admin_username, tracking_server.admin_password)
    port = tracking_server.uri.rsplit(":", 1)[1]
    for host, status in ((f"attacker.example:{port}", 403), (f"localhost:{port}", 200)):
        response = requests.get(
            url, params={"max_results": 1}, auth=admin, headers={"Host": host}, timeout=30
        )
        assert response.status_code == status, host


def log_epochs(experiment: str, worker: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    """One training process: a run whose epochs go through the project's own logging path.

    `training_run` starts the run as training does; `MlflowCallback.on_epoch_end` queues one
    batched request per epoch for MLflow's background thread; ending the run drains the queue.
    """
    with training_run(TrainConfig(seed=worker), experiment=experiment) as run:
        tracker = MlflowCallback(
            run, TrainConfig(), arrays=None, study="none", env=None, input_example=None
        )
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


def start_with_cli(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`server start`, with its printed `export` lines applied the way a shell `eval` would."""
    arguments = ["start", "--data-dir", str(data_dir), "--port", str(free_port())]
    result = CliRunner().invoke(server, arguments)
    assert result.exit_code == 0, result.output
    env = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in result.stdout.splitlines()
        if line.startswith("export ")
    )
    assert set(env) == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.e2e
def test_restart_keeps_runs_metrics_and_artifacts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, own_server_dir: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    data_dir = own_server_dir
    first = start_with_cli(data_dir, monkeypatch)
    client = MlflowClient()
    experiment_id = client.create_experiment("restart")
    run_id = client.create_run(experiment_id, run_name="before-restart").info.run_id
    client.log_param(run_id, "lr", "0.001")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("valid_acc", s / 10, now, s) for s in (1, 2, 3)])
    (tmp_path / "config.json").write_text('{"lr": 0.001}')
    client.log_artifact(run_id, str(tmp_path / "config.json"))
    client.set_terminated(run_id)

    assert CliRunner().invoke(server, ["stop", "--data-dir", str(data_dir)]).exit_code == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{first['MLFLOW_TRACKING_URI']}/health", timeout=5)

    # On another port: what a run refers to must not depend on where the server listens.
    second = start_with_cli(data_dir, monkeypatch)
    assert second["MLFLOW_TRACKING_PASSWORD"] == first["MLFLOW_TRACKING_PASSWORD"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.001"}
    history = client.get_metric_history(run_id, "valid_acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    downloaded = client.download_artifacts(run_id, "config.json", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == '{"lr": 0.001}'


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
    for command in ([], ["start"], ["stop"]):
        result = CliRunner().invoke(server, [*command, "-h"])
        assert result.exit_code == 0
        assert "Usage:" in result.output
