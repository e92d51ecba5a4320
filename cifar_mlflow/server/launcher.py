"""The team tracking server without Docker: a PostgreSQL cluster plus `mlflow server`.

`docker-compose.yml` runs the server image, whose entrypoint is `docker/mlflow-server.sh`; this
module runs that same script against a PostgreSQL cluster it creates with `initdb`, so tests and
users without Docker get the deployed configuration (PostgreSQL backend and auth stores, proxied
artifacts, basic auth, allowed hosts), bound to the loopback interface.

A data folder holds everything, so stopping and starting on it keeps every run:

    postgres/        the cluster, owned by the `postgres` user when started as root
    artifacts/       the proxied artifact store
    secrets.json     generated passwords and key (mode 0600), reused by every start
    basic_auth.ini   written by mlflow-server.sh on every start
    postgres.log, mlflow.log
    server.json      pid and ports of the running server, absent once stopped
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from cifar_mlflow.reachability import healthy
from cifar_mlflow.server.postgres import (
    DB_USER,
    HOST,
    Postgres,
    ServerError,
    write_private,
)

SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "mlflow-server.sh"
ADMIN_USERNAME = "admin"
# Two uvicorn workers serve one person or a test session; the image keeps MLflow's four.
WORKERS = 2
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TrackingServer:
    """A running server and what a client needs to reach it."""

    uri: str
    admin_username: str
    admin_password: str
    data_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """The variables that point MLflow clients (and `mlflow run`) at this server as admin."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": self.admin_username,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
        }


def start(data_dir: Path, port: int = 5000) -> TrackingServer:
    """Start PostgreSQL and `mlflow server` from `data_dir`, creating the cluster on first use.

    Returns once the server answers; both keep running after this process exits.
    """
    data_dir = data_dir.resolve()
    state_file = data_dir / "server.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if _server_process(state) is not None:
            raise ServerError(
                f"a server from {data_dir} is already running at {state['uri']}; stop it first "
                f"with `python -m cifar_mlflow server stop --data-dir {data_dir}`"
            )
        state_file.unlink()
    _ensure_port_free(port)
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = _load_or_create_secrets(data_dir / "secrets.json")
    postgres = Postgres(data_dir, secret["postgres_password"])
    try:
        postgres.start()
        return _start_mlflow(data_dir, port, postgres.port, secret)
    except BaseException:
        postgres.stop()
        raise


def stop(data_dir: Path) -> None:
    """Stop the server started from `data_dir`, then its PostgreSQL cluster."""
    data_dir = data_dir.resolve()
    state_file = data_dir / "server.json"
    postgres = Postgres(data_dir, password="")
    if not state_file.exists() and not postgres.running():
        raise ServerError(f"no server is running from {data_dir}")
    if state_file.exists():
        process = _server_process(json.loads(state_file.read_text()))
        if process is not None:
            _terminate(process)
        state_file.unlink()
    postgres.stop()


def _start_mlflow(
    data_dir: Path, port: int, postgres_port: int, secret: dict[str, str]
) -> TrackingServer:
    artifacts = data_dir / "artifacts"
    artifacts.mkdir(exist_ok=True)
    env = {
        **os.environ,
        # `mlflow` must be the one installed next to this interpreter, not any on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "POSTGRES_HOST": HOST,
        "POSTGRES_PORT": str(postgres_port),
        "POSTGRES_USER": DB_USER,
        "POSTGRES_PASSWORD": secret["postgres_password"],
        "MLFLOW_HOST": HOST,
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": str(WORKERS),
        "MLFLOW_ALLOWED_HOSTS": "",
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_AUTH_CONFIG_PATH": str(data_dir / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USERNAME,
        "MLFLOW_AUTH_ADMIN_PASSWORD": secret["admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret["flask_secret_key"],
    }
    log_path = data_dir / "mlflow.log"
    with log_path.open("ab") as log:
        # A session of its own keeps the server alive after this process and out of reach of a
        # Ctrl-C meant for the caller's terminal.
        process = subprocess.Popen(
            ["bash", str(SERVER_SCRIPT)],
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://{HOST}:{port}"
    try:
        _wait_until_healthy(process, uri, log_path)
    except BaseException:
        if process.poll() is None:
            _terminate(psutil.Process(process.pid))
        raise
    state = {
        "uri": uri,
        "pid": process.pid,
        # Together with the pid, the start time tells this server from a later process that
        # reuses its pid after a reboot.
        "create_time": psutil.Process(process.pid).create_time(),
    }
    (data_dir / "server.json").write_text(json.dumps(state, indent=2))
    return TrackingServer(uri, ADMIN_USERNAME, secret["admin_password"], data_dir)


def _wait_until_healthy(process: subprocess.Popen, uri: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(uri):
        if process.poll() is not None:
            raise ServerError(
                f"mlflow server exited during start-up: {_last_line(log_path)} (log: {log_path})"
            )
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def _load_or_create_secrets(path: Path) -> dict[str, str]:
    if path.exists():
        return json.loads(path.read_text())
    secret = {
        name: secrets.token_urlsafe(24)
        for name in ("postgres_password", "admin_password", "flask_secret_key")
    }
    write_private(path, json.dumps(secret, indent=2))
    return secret


def _ensure_port_free(port: int) -> None:
    with socket.socket() as sock:
        # As uvicorn binds: connections of a just-stopped server in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServerError(
                f"port {port} on {HOST} is in use; choose another with --port"
            ) from None


def _server_process(state: dict) -> psutil.Process | None:
    try:
        process = psutil.Process(state["pid"])
        if process.create_time() == state["create_time"] and process.is_running():
            return process
    except psutil.NoSuchProcess:
        pass
    return None


def _terminate(process: psutil.Process) -> None:
    # `mlflow server` forwards SIGTERM to uvicorn, which lets its workers finish their requests;
    # whatever is still alive after the grace period is killed.
    family = [process, *process.children(recursive=True)]
    process.terminate()
    _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_S)
    for survivor in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    psutil.wait_procs(alive, timeout=5)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
