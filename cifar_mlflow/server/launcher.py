"""The team tracking server without Docker: a PostgreSQL cluster plus `mlflow server`.

`docker-compose.yml` runs the server image, whose entrypoint is `docker/mlflow-server.sh`; this
module runs that same script against a PostgreSQL cluster it creates with `initdb`, so tests and
users without Docker get the deployed configuration (PostgreSQL backend and auth stores, proxied
artifacts, the guarded basic auth, TLS, exact allowed hosts), bound to the loopback interface.

A data folder (0700, owned by the service account, see `account`) holds everything, so stopping
and starting on it keeps every run:

    postgres/        the cluster
    artifacts/       the proxied artifact store
    secrets/         one 0600 file per generated secret, reused by every start
    tls/             the generated CA and server certificate (0600)
    server/          a copy of docker/'s entrypoint and guard, made on every start, so that
                     the service account needs no access to the checkout
    tmp/             the server's temporary files
    basic_auth.ini   written by mlflow-server.sh on every start
    postgres.log, mlflow.log (rotated: mlflow.log.1, ...)
    server.json      pid and ports of the running server, absent once stopped

The server's processes get an environment built here, not the caller's: no password reaches
them (the admin's is read from its file by a process that only creates the admin).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from cifar_mlflow.reachability import healthy
from cifar_mlflow.server.account import Account, hand_over, service_account, write_private
from cifar_mlflow.server.interpreter import server_python
from cifar_mlflow.server.places import refuse_inside_work_tree
from cifar_mlflow.server.postgres import DB_USER, HOST, PROGRAM_ENV, Postgres, ServerError
from cifar_mlflow.server.tls import CertificateFiles, ensure_certificate, install_certificate

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
SERVER_SCRIPT = DOCKER_DIR / "mlflow-server.sh"
SERVER_FILES = ("mlflow-server.sh", "secrets.sh", "rotating_log.py", "guard")
ADMIN_USERNAME = "admin"
SECRET_NAMES = (
    "postgres_password",
    "postgres_superuser_password",
    "admin_password",
    "flask_secret_key",
)
# Two uvicorn workers serve one person or a test session; the image keeps MLflow's four.
WORKERS = 2
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0  # uvicorn waits for idle keep-alive connections of clients still open


@dataclass(frozen=True)
class TrackingServer:
    """A running server and what a client needs to reach it."""

    uri: str
    admin_username: str
    admin_password_file: Path
    ca_file: Path
    data_dir: Path

    @property
    def admin_password(self) -> str:
        return self.admin_password_file.read_text()

    @property
    def env(self) -> dict[str, str]:
        """The variables that point MLflow clients (and `mlflow run`) at this server as admin."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(self.ca_file),
            "MLFLOW_TRACKING_USERNAME": self.admin_username,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
        }

    def shell_lines(self) -> list[str]:
        """`export` lines for `eval`: the password is read from its 0600 file when they are
        evaluated, so it is never printed."""
        quoted_file = shlex.quote(str(self.admin_password_file))
        return [
            *(
                f"export {name}={shlex.quote(value)}"
                for name, value in self.env.items()
                if name != "MLFLOW_TRACKING_PASSWORD"
            ),
            f'export MLFLOW_TRACKING_PASSWORD="$(cat {quoted_file})"',
        ]


def start(
    data_dir: Path, port: int = 5000, operator_certificate: CertificateFiles | None = None
) -> TrackingServer:
    """Start PostgreSQL and `mlflow server` from `data_dir`, creating the cluster on first use.

    It serves HTTPS with `operator_certificate` (copied into the data folder), else with the
    certificate of a CA generated for it on first use.

    Returns once the server answers; both keep running after this process exits.
    """
    data_dir = data_dir.resolve()
    refuse_inside_work_tree(data_dir, "the data folder")
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
    account = service_account()
    python = server_python(account)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_files = ensure_secrets(data_dir)
    certificate = (
        install_certificate(data_dir / "tls", operator_certificate)
        if operator_certificate
        else ensure_certificate(data_dir / "tls", [])
    )
    for folder in ("artifacts", "tmp"):
        (data_dir / folder).mkdir(mode=0o700, exist_ok=True)
    _copy_server_files(data_dir / "server")
    hand_over(data_dir, account)
    postgres = Postgres(data_dir, account)
    try:
        postgres.start()
        return _start_mlflow(
            data_dir, port, postgres.port, secret_files, certificate, account, python
        )
    except BaseException:
        postgres.stop()
        raise


def stop(data_dir: Path) -> None:
    """Stop the server started from `data_dir`, then its PostgreSQL cluster."""
    data_dir = data_dir.resolve()
    state_file = data_dir / "server.json"
    postgres = Postgres(data_dir, service_account())
    if not state_file.exists() and not postgres.running():
        raise ServerError(f"no server is running from {data_dir}")
    if state_file.exists():
        process = _server_process(json.loads(state_file.read_text()))
        if process is not None:
            _terminate(process)
        state_file.unlink()
    postgres.stop()


def ensure_secrets(data_dir: Path) -> dict[str, Path]:
    """The secret files of `data_dir/secrets`, each generated (0600) when absent."""
    folder = data_dir / "secrets"
    folder.mkdir(mode=0o700, exist_ok=True)
    files = {name: folder / name for name in SECRET_NAMES}
    for path in files.values():
        if not path.exists():
            write_private(path, secrets.token_urlsafe(32))
    return files


def _copy_server_files(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    for name in SERVER_FILES:
        source = DOCKER_DIR / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    for root, folders, files in os.walk(target):
        for folder in folders:
            Path(root, folder).chmod(0o700)
        for file in files:
            Path(root, file).chmod(0o600)


def _server_env(
    data_dir: Path,
    port: int,
    postgres_port: int,
    secret_files: dict[str, Path],
    certificate: CertificateFiles,
    python: Path,
) -> dict[str, str]:
    """The entrypoint's whole environment: settings and the names of secret files only."""
    env = {
        **PROGRAM_ENV,
        # `python` must be the server's interpreter, not any on PATH.
        "PATH": f"{python.parent}{os.pathsep}{PROGRAM_ENV['PATH']}",
        "HOME": str(data_dir),
        "TMPDIR": str(data_dir / "tmp"),
        "MLFLOW_LOG_FILE": str(data_dir / "mlflow.log"),
        "POSTGRES_HOST": HOST,
        "POSTGRES_PORT": str(postgres_port),
        "POSTGRES_USER": DB_USER,
        "POSTGRES_PASSWORD_FILE": str(secret_files["postgres_password"]),
        "MLFLOW_HOST": HOST,
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": str(WORKERS),
        "MLFLOW_ALLOWED_HOSTS": "",
        "MLFLOW_ARTIFACTS_DESTINATION": str(data_dir / "artifacts"),
        "MLFLOW_AUTH_CONFIG_PATH": str(data_dir / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USERNAME,
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(secret_files["flask_secret_key"]),
        "MLFLOW_TLS_CERT_FILE": str(certificate.cert),
        "MLFLOW_TLS_KEY_FILE": str(certificate.key),
        "CIFAR_GUARD_STATE": str(data_dir / "login-throttle.sqlite"),
    }
    # The admin password's file reaches the server only to create the admin, on the first start.
    if not (data_dir / "secrets" / ".admin-created").exists():
        env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"] = str(secret_files["admin_password"])
    return env


def _start_mlflow(
    data_dir: Path,
    port: int,
    postgres_port: int,
    secret_files: dict[str, Path],
    certificate: CertificateFiles,
    account: Account,
    python: Path,
) -> TrackingServer:
    admin_created = data_dir / "secrets" / ".admin-created"
    log_path = data_dir / "mlflow.log"
    env = _server_env(data_dir, port, postgres_port, secret_files, certificate, python)
    process = _spawn_server(data_dir, env, log_path, account)
    uri = f"https://{HOST}:{port}"
    try:
        _wait_until_healthy(process, uri, log_path, certificate.ca)
    except BaseException:
        if process.poll() is None:
            _terminate(psutil.Process(process.pid))
        raise
    if not admin_created.exists():
        write_private(admin_created, "")
    _record_state(data_dir, uri, process.pid, postgres_port)
    return TrackingServer(
        uri, ADMIN_USERNAME, secret_files["admin_password"], certificate.ca, data_dir
    )


def _spawn_server(
    data_dir: Path, env: dict[str, str], log_path: Path, account: Account
) -> subprocess.Popen:
    if not log_path.exists():
        write_private(log_path, "")
        os.chown(log_path, account.uid, account.gid)
    # The entrypoint's own errors land in the log directly; the server's output is rotated.
    with log_path.open("ab") as log:
        # A session of its own keeps the server alive after this process and out of reach of a
        # Ctrl-C meant for the caller's terminal.
        return subprocess.Popen(
            ["bash", str(data_dir / "server" / "mlflow-server.sh")],
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=account.uid,
            group=account.gid,
            extra_groups=[],
            umask=0o077,
        )


def _record_state(data_dir: Path, uri: str, pid: int, postgres_port: int) -> None:
    state = {
        "uri": uri,
        "pid": pid,
        "postgres_port": postgres_port,
        # Together with the pid, the start time tells this server from a later process that
        # reuses its pid after a reboot.
        "create_time": psutil.Process(pid).create_time(),
    }
    write_private(data_dir / "server.json", json.dumps(state, indent=2))


def _wait_until_healthy(process: subprocess.Popen, uri: str, log_path: Path, ca_file: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    context = ssl.create_default_context(cafile=str(ca_file))
    while not healthy(uri, context):
        if process.poll() is not None:
            raise ServerError(
                f"mlflow server exited during start-up: {_last_line(log_path)} (log: {log_path})"
            )
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


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
    # SIGTERM to every process of the server: the launching shell defers a signal until its
    # child exits, and uvicorn lets its workers finish their requests; whatever is still alive
    # after the grace period is killed.
    family = [process, *process.children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_S)
    for survivor in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    psutil.wait_procs(alive, timeout=5)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
