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
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click
import psutil

from cifar_mlflow.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO_ROOT / "docker" / "mlflow-server.sh"
POSTGRES_INIT_SQL = REPO_ROOT / "docker" / "postgres-init.sql"
DB_USER = "mlflow"
ADMIN_USERNAME = "admin"
HOST = "127.0.0.1"
# Two uvicorn workers serve one person or a test session; the image keeps MLflow's four.
WORKERS = 2
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
REACHABLE_TIMEOUT_S = 5.0


class ServerError(UserError):
    """A server that cannot start or stop; its message is one line."""


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


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


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
    postgres = _Postgres(data_dir, secret["postgres_password"])
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
    postgres = _Postgres(data_dir, password="")
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


class _Postgres:
    """The cluster in `<data_dir>/postgres`, run as the `postgres` user when we are root."""

    def __init__(self, data_dir: Path, password: str) -> None:
        self.cluster = data_dir / "postgres"
        self.log = data_dir / "postgres.log"
        self.password = password
        self.port = 0
        self.bin_dir = _postgres_bin_dir()
        # PostgreSQL refuses to run as root, and CI runs as root.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        if not (self.cluster / "PG_VERSION").exists():
            self._init_cluster()
        self.port = free_port()
        # No Unix socket: its path could exceed the 107-byte limit in a deep data folder, and
        # every client connects over TCP anyway.
        options = f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories=''"
        self._run_as_owner(
            "pg_ctl", "start", "-D", str(self.cluster), "-l", str(self.log), "-w", "-o", options
        )
        # Idempotent, so a start after an interrupted first start completes the set-up.
        _run(
            "psql",
            [str(self.bin_dir / "psql"), "-h", HOST, "-p", str(self.port), "-U", DB_USER,
             "-d", "postgres", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(POSTGRES_INIT_SQL)],
            log=self.log, env={**os.environ, "PGPASSWORD": self.password},
        )  # fmt: skip

    def running(self) -> bool:
        if not (self.cluster / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.cluster)],
            capture_output=True,
        )
        return status.returncode == 0

    def stop(self) -> None:
        if self.running():
            self._run_as_owner("pg_ctl", "stop", "-D", str(self.cluster), "-m", "fast", "-w")

    def _init_cluster(self) -> None:
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        password_file = self.cluster.parent / ".initdb-password"
        password_file.unlink(missing_ok=True)  # left over by a killed first start
        _write_private(password_file, self.password)
        try:
            if self.as_user:
                self._hand_to_postgres_user(password_file)
            self._run_as_owner(
                "initdb", "-D", str(self.cluster), "-U", DB_USER, f"--pwfile={password_file}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale",
            )  # fmt: skip
        finally:
            password_file.unlink()

    def _hand_to_postgres_user(self, *files: Path) -> None:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(
                "PostgreSQL refuses to run as root and there is no `postgres` user to run it as"
            ) from None
        data_dir = self.cluster.parent
        # Search permission only, so that `postgres` can reach its cluster inside the folder.
        data_dir.chmod(data_dir.stat().st_mode | 0o001)
        if subprocess.run([*self.as_user, "test", "-x", str(data_dir)]).returncode != 0:
            raise ServerError(
                f"the postgres user cannot reach {data_dir}: choose a data folder outside "
                "private directories such as /root"
            )
        self.log.touch()
        for path in (self.cluster, self.log, *files):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run_as_owner(self, program: str, *args: str) -> None:
        _run(program, [*self.as_user, str(self.bin_dir / program), *args], log=self.log)


def _run(program: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise ServerError(f"{program} failed: {detail[-1]} (log: {log})")


def _postgres_bin_dir() -> Path:
    # Debian and Ubuntu keep the server programs off PATH, one folder per major version.
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("initdb")
    if on_path is None:
        raise ServerError(
            "PostgreSQL not found: install it (Debian/Ubuntu: apt-get install postgresql) "
            "or put initdb and pg_ctl on PATH"
        )
    return Path(on_path).parent


def _load_or_create_secrets(path: Path) -> dict[str, str]:
    if path.exists():
        return json.loads(path.read_text())
    secret = {
        name: secrets.token_urlsafe(24)
        for name in ("postgres_password", "admin_password", "flask_secret_key")
    }
    _write_private(path, json.dumps(secret, indent=2))
    return secret


def _write_private(path: Path, text: str) -> None:
    # Created with mode 0600, so never readable by others, not even for an instant.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)


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


def healthy(uri: str) -> bool:
    """Whether the MLflow server at `uri` answers its health check."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def check_reachable(tracking_uri: str, timeout_s: float = REACHABLE_TIMEOUT_S) -> None:
    """Fail in seconds, in one line, when the tracking server cannot be reached.

    MLflow's own client retries with backoff for minutes before it gives up.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # any answer, 401 included, means a server is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"tracking server {tracking_uri} is unreachable ({reason})") from None


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


@click.group("server", context_settings={"help_option_names": ["-h", "--help"]})
def server() -> None:
    """Run the team tracking server without Docker (PostgreSQL + mlflow server, basic auth)."""


@server.command("start")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of the database, artifacts and credentials; reuse it to keep the runs.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="Port of the server, on 127.0.0.1.",
)
def start_command(data_dir: Path, port: int) -> None:
    """Start the server and print the variables that point clients at it (`eval` them)."""
    try:
        running = start(data_dir, port)
    except ServerError as error:
        raise click.UsageError(str(error)) from None
    for name, value in running.env.items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo(
        f"MLflow UI: {running.uri} (user {running.admin_username}); stop it with "
        f"`python -m cifar_mlflow server stop --data-dir {shlex.quote(str(data_dir))}`",
        err=True,
    )


@server.command("stop")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The folder the server was started from.",
)
def stop_command(data_dir: Path) -> None:
    """Stop the server started from --data-dir and its PostgreSQL cluster."""
    try:
        stop(data_dir)
    except ServerError as error:
        raise click.UsageError(str(error)) from None
