"""Back up a running launcher server, and restore the backup into a new data folder.

A backup is a folder (0700, files 0600) of four files:

    mlflow.dump, mlflow_auth.dump   pg_dump archives of the runs and of the users/permissions
    artifacts.tar.gz                the proxied artifact store
    secrets.tar.gz                  the data folder's secrets: restored users keep their
                                    passwords, and `server start` keeps printing the admin's

It holds every password, so it must never land where git or a Docker build context could pick
it up: a folder inside a git work tree is refused.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from cifar_mlflow.server.account import hand_over, service_account
from cifar_mlflow.server.launcher import ensure_secrets
from cifar_mlflow.server.places import refuse_inside_work_tree
from cifar_mlflow.server.postgres import DB_USER, HOST, Postgres, ServerError

DATABASES = ("mlflow", "mlflow_auth")
ARCHIVES = ("artifacts", "secrets")


def backup(data_dir: Path, target: Path) -> None:
    """Copy the databases, artifacts and secrets of the server running from `data_dir`."""
    data_dir, target = data_dir.resolve(), target.resolve()
    refuse_inside_work_tree(target, "the backup folder")
    state_file = data_dir / "server.json"
    if not state_file.exists():
        raise ServerError(f"no server is running from {data_dir}; start it to back it up")
    if target.exists() and any(target.iterdir()):
        raise ServerError(f"{target} is not empty; back up into a new folder")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.chmod(0o700)
    port = json.loads(state_file.read_text())["postgres_port"]
    postgres = Postgres(data_dir, service_account())
    for database in DATABASES:
        dump = target / f"{database}.dump"
        _private(dump)
        postgres.client(
            "pg_dump", "-h", HOST, "-p", str(port), "-U", DB_USER, "--format=custom",
            f"--file={dump}", database,
        )  # fmt: skip
    for name in ARCHIVES:
        archive = target / f"{name}.tar.gz"
        _private(archive)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(data_dir / name, arcname=".")


def restore(data_dir: Path, source: Path) -> None:
    """Rebuild a data folder from a backup; `server start` on it then serves what was backed
    up. The folder must not hold a server yet."""
    data_dir, source = data_dir.resolve(), source.resolve()
    refuse_inside_work_tree(data_dir, "the data folder")
    missing = [
        name
        for name in (*(f"{d}.dump" for d in DATABASES), *(f"{a}.tar.gz" for a in ARCHIVES))
        if not (source / name).is_file()
    ]
    if missing:
        raise ServerError(f"{source} is not a backup: {', '.join(missing)} missing")
    if (data_dir / "postgres").exists() or (data_dir / "secrets").exists():
        raise ServerError(f"{data_dir} already holds a server; restore into a new folder")
    account = service_account()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ARCHIVES:
        folder = data_dir / name
        folder.mkdir(mode=0o700)
        with tarfile.open(source / f"{name}.tar.gz") as tar:
            tar.extractall(folder, filter="data")
    ensure_secrets(data_dir)
    # The admin exists in the restored users: it is never created again.
    (data_dir / "secrets" / ".admin-created").touch(mode=0o600)
    hand_over(data_dir, account)
    postgres = Postgres(data_dir, account)
    postgres.start()
    try:
        for database in DATABASES:
            postgres.client(
                "pg_restore", "-h", HOST, "-p", str(postgres.port), "-U", DB_USER,
                "--clean", "--if-exists", "--exit-on-error", f"--dbname={database}",
                str(source / f"{database}.dump"),
            )  # fmt: skip
    finally:
        postgres.stop()


def _private(path: Path) -> None:
    # Created 0600 before anything is written into it.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
