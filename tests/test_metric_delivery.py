"""Every metric point arrives exactly once, whatever the tracking server answers (issue 22).

The saturated server is a real one: `mlflow server` on a PostgreSQL whose `max_connections`
is 3, so that concurrent requests beyond 3 are refused (`too many clients`) and the server
answers 503. MLflow's own client retries a 500 for minutes before giving up; the
writers here get `MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`, which brings the moment it gives up (and
MLflow's asynchronous logging drops the batch) to the first refusal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cifar_mlflow.server.postgres import free_port
from cifar_mlflow.tracking.metric_writer import MetricsLostError, MetricWriter
from tests.metric_writer_worker import epoch_metrics

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
WRITERS, EPOCHS = 8, 30
EPOCH_KEYS = tuple(epoch_metrics(1).metrics())


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: the cluster then runs as its system account."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def saturated_server() -> Iterator[str]:
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed")
    folder = Path(tempfile.mkdtemp(prefix="cifar-mlflow-saturated-"))
    cluster, db_port, port = folder / "db", free_port(), free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    subprocess.run(as_postgres([str(POSTGRES_BIN / "initdb"), "-D", str(cluster), "-U",
                                "mlflow", "--auth=trust", "--no-locale", "-E", "UTF8"]), **quiet)  # fmt: skip
    options = (f"-p {db_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
               "-c max_connections=3 -c superuser_reserved_connections=0")  # fmt: skip
    subprocess.run(as_postgres([str(POSTGRES_BIN / "pg_ctl"), "start", "-D", str(cluster), "-l",
                                str(folder / "postgres.log"), "-w", "-o", options]), **quiet)  # fmt: skip
    server = None
    try:
        subprocess.run([str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(db_port),
                        "-U", "mlflow", "mlflow"], **quiet)  # fmt: skip
        # No job runners: their idle connections would leave the request handlers none at all.
        env = {
            **os.environ,
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        log = (folder / "server.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri",
             f"postgresql+psycopg2://mlflow@127.0.0.1:{db_port}/mlflow",
             "--default-artifact-root", str(folder / "artifacts")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        yield uri
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        subprocess.run(as_postgres([str(POSTGRES_BIN / "pg_ctl"), "stop", "-D", str(cluster),
                                    "-m", "immediate"]), stdout=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def created_runs(count: int) -> list[str]:
    """`count` runs, created one by one (retried: the server refuses some requests)."""
    client = MlflowClient()
    experiment_id = client.create_experiment(f"delivery-{time.time_ns()}")
    return [client.create_run(experiment_id).info.run_id for _ in range(count)]


def test_8_writers_by_30_epochs_on_a_saturated_server_log_every_point_once(
    saturated_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", saturated_server)
    run_ids = created_runs(WRITERS)
    env = {**os.environ, "WRITER_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.metric_writer_worker", run_id, str(EPOCHS)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for run_id in run_ids
    ]
    outputs = [writer.communicate(timeout=240)[0] for writer in writers]
    refused = sum("not logged" in output or "Failed to log" in output for output in outputs)
    assert refused, "the server never refused a write: the test saw no saturation"
    client = MlflowClient()
    for run_id, output in zip(run_ids, outputs, strict=True):
        for key in EPOCH_KEYS:
            steps = Counter(point.step for point in client.get_metric_history(run_id, key))
            assert steps == Counter(range(1, EPOCHS + 1)), (key, steps, output[-3000:])
