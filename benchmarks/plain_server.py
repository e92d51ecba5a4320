"""A plain `mlflow server` for the benchmarks: SQLite, local artifacts, a free loopback port.

No PostgreSQL and no authentication, unlike `python -m cifar_mlflow server`: the benchmarks
time the client's side against the cheapest server to start.
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
    log = (folder / "server.log").open("w")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    # Its own session, so stopping it also stops the workers it forks.
    server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"mlflow server did not start; see {log.name}")
            time.sleep(0.5)
        yield uri, psutil.Process(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
