"""Servers for the benchmarks (and the serving test), each on a free loopback port.

`plain_server`: a plain `mlflow server` with SQLite and local artifacts. No PostgreSQL and no
authentication, unlike `python -m cifar_mlflow server`: the benchmarks time the client's side
against the cheapest server to start. `model_server`: `mlflow models serve` of one model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import psutil

from cifar_mlflow.reachability import healthy
from cifar_mlflow.server.postgres import free_port

START_TIMEOUT_S = 180


@contextmanager
def plain_server(folder: Path, workers: int = 1) -> Iterator[tuple[str, psutil.Process]]:
    """The server's URI and process, with its stores and log in `folder`; stopped on exit."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    with running(command, f"http://127.0.0.1:{port}", folder / "server.log") as started:
        yield started


@contextmanager
def model_server(
    model_uri: str, folder: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, psutil.Process]]:
    """`mlflow models serve -m model_uri --env-manager local`: its URL and process."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = folder / "model-server.log"
    with running(command, f"http://127.0.0.1:{port}", log, env) as started:
        yield started


@contextmanager
def running(
    command: list[str], uri: str, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, psutil.Process]]:
    """`command` started in `log_path`'s folder, once `uri` answers its health check."""
    log = log_path.open("w")
    # Its own session, so stopping it also stops the workers it forks.
    server = subprocess.Popen(
        command,
        cwd=log_path.parent,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"the server did not start; see {log.name}")
            time.sleep(0.5)
        yield uri, psutil.Process(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
