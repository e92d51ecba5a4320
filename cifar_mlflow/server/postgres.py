"""A PostgreSQL cluster in a data folder, for the launcher: created, started, stopped.

The cluster runs as the launcher's service account (`account`), never as root. Its superuser
`postgres` only sets it up (docker/postgres-init.sql); the server connects as `mlflow`, a role
that owns its two databases and nothing else. The passwords are `secrets/postgres_password`
(mlflow's) and `secrets/postgres_superuser_password`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from cifar_mlflow.server.account import Account, ServerError, write_private

HOST = "127.0.0.1"
DB_USER = "mlflow"
SUPERUSER = "postgres"
# What the cluster's programs inherit: nothing of the caller's environment (which may hold a
# password, e.g. after `eval "$(... server start)"`) but where programs and locales are.
PROGRAM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
POSTGRES_INIT_SQL = Path(__file__).resolve().parents[2] / "docker" / "postgres-init.sql"
POSTGRES_ADOPT_SQL = POSTGRES_INIT_SQL.with_name("postgres-adopt.sql")


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Postgres:
    """The cluster in `<data_dir>/postgres`, run as `account`."""

    def __init__(self, data_dir: Path, account: Account) -> None:
        self.cluster = data_dir / "postgres"
        self.log = data_dir / "postgres.log"
        self.secrets = data_dir / "secrets"
        self.port = 0
        self.bin_dir = _postgres_bin_dir()
        self.account = account
        self.as_user = account.switch

    def start(self) -> None:
        if not (self.cluster / "PG_VERSION").exists():
            self._init_cluster()
        self.port = free_port()
        # No Unix socket: its path could exceed the 107-byte limit in a deep data folder, and
        # every client connects over TCP anyway.
        options = f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories=''"
        if not self.log.exists():
            write_private(self.log, "")
            os.chown(self.log, self.account.uid, self.account.gid)
        self._run_as_owner(
            "pg_ctl", "start", "-D", str(self.cluster), "-l", str(self.log), "-w", "-o", options
        )
        try:
            self._set_up()
        except ServerError:
            # A cluster whose superuser is still `mlflow` (made before this role was demoted):
            # as mlflow, give it the superuser it lacks, then set it up.
            self._psql(DB_USER, POSTGRES_ADOPT_SQL, "superuser_password_file",
                       self.secrets / "postgres_superuser_password")  # fmt: skip
            self._set_up()

    def _set_up(self) -> None:
        # Idempotent, so a start after an interrupted first start completes the set-up.
        self._psql(SUPERUSER, POSTGRES_INIT_SQL, "mlflow_password_file",
                   self.secrets / "postgres_password")  # fmt: skip

    def _psql(self, user: str, script: Path, variable: str, password_file: Path) -> None:
        self.client(
            "psql", "-h", HOST, "-p", str(self.port), "-U", user, "-d", "postgres", "-q",
            "-v", "ON_ERROR_STOP=1", "-v", f"{variable}={password_file}", "-f", str(script),
            superuser=user == SUPERUSER,
        )  # fmt: skip

    def running(self) -> bool:
        if not (self.cluster / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.cluster)],
            capture_output=True,
            env=PROGRAM_ENV,
        )
        return status.returncode == 0

    def stop(self) -> None:
        if self.running():
            self._run_as_owner("pg_ctl", "stop", "-D", str(self.cluster), "-m", "fast", "-w")

    def _init_cluster(self) -> None:
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.cluster, self.account.uid, self.account.gid)
        password_file = self.cluster.parent / ".initdb-password"
        password_file.unlink(missing_ok=True)  # left over by a killed first start
        write_private(password_file, self._password(superuser=True))
        os.chown(password_file, self.account.uid, self.account.gid)
        try:
            self._run_as_owner(
                "initdb", "-D", str(self.cluster), "-U", SUPERUSER, f"--pwfile={password_file}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale",
            )  # fmt: skip
        finally:
            password_file.unlink()

    def client(self, program: str, *args: str, superuser: bool = False) -> None:
        """Run a client program of this PostgreSQL version (psql, pg_dump, pg_restore) as
        `mlflow`, or as the superuser."""
        password = self._password(superuser)
        _run(program, [str(self.bin_dir / program), *args], log=self.log,
             env={**PROGRAM_ENV, "PGPASSWORD": password})  # fmt: skip

    def _password(self, superuser: bool) -> str:
        name = "postgres_superuser_password" if superuser else "postgres_password"
        return (self.secrets / name).read_text()

    def _run_as_owner(self, program: str, *args: str) -> None:
        _run(program, [*self.as_user, str(self.bin_dir / program), *args], log=self.log,
             env=PROGRAM_ENV)  # fmt: skip


def _run(program: str, command: list[str], log: Path, env: dict[str, str]) -> None:
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
