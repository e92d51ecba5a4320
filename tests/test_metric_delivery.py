"""Every metric point arrives exactly once, whatever the tracking server answers (issue 22).

The saturated server is a real one: `mlflow server` on a PostgreSQL whose `max_connections`
is 5 (the idle server holds 3), so that concurrent requests beyond 2 are refused (`too many
clients`) and the server answers 503. MLflow's own client retries a 503 for minutes before
giving up; the writers here get `MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`, which brings the moment it
gives up (and MLflow's asynchronous logging drops the batch) to the first refusal.
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

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from cifar_mlflow import schema
from cifar_mlflow.server.postgres import free_port
from cifar_mlflow.tracking.metric_writer import REFUSED_FOR_GOOD, MetricsLostError, MetricWriter
from tests.metric_writer_worker import epoch_metrics

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
WRITERS, EPOCHS = 8, 30
EPOCH_KEYS = tuple(epoch_metrics(1).metrics())


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: the cluster then runs as its system account."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres(program: str, *args: object) -> None:
    command = [str(POSTGRES_BIN / program), *map(str, args)]
    subprocess.run(as_postgres(command), check=True, capture_output=True)


@pytest.fixture(scope="module")
def saturated_server() -> Iterator[str]:
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed")
    folder = Path(tempfile.mkdtemp(prefix="cifar-mlflow-saturated-"))
    cluster, db_port, port = folder / "db", free_port(), free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    options = (
        f"-p {db_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
        "-c max_connections=5 -c superuser_reserved_connections=0"
    )
    log = folder / "postgres.log"
    postgres("initdb", "-D", cluster, "-U", "mlflow", "--auth=trust", "--no-locale", "-E", "UTF8")
    postgres("pg_ctl", "start", "-D", cluster, "-l", log, "-w", "-o", options)
    server = None
    try:
        createdb = [POSTGRES_BIN / "createdb", "-h", "127.0.0.1", "-p", db_port, "-U", "mlflow"]
        subprocess.run([*map(str, createdb), "mlflow"], check=True, capture_output=True)
        # No job runners: their idle connections would leave the request handlers none at all.
        env = {
            **os.environ,
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        log = (folder / "server.log").open("w")
        store = f"postgresql+psycopg2://mlflow@127.0.0.1:{db_port}/mlflow"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "1", "--backend-store-uri", store]
        command += ["--default-artifact-root", str(folder / "artifacts")]
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
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
        postgres("pg_ctl", "stop", "-D", cluster, "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


def created_runs(count: int) -> list[str]:
    """`count` runs, created one by one (retried: the server refuses some requests)."""
    client = MlflowClient()
    experiment_id = client.create_experiment(f"delivery-{time.time_ns()}")
    return [client.create_run(experiment_id).info.run_id for _ in range(count)]


@pytest.mark.e2e
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
        )
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


def test_a_retry_after_a_write_the_server_applied_but_did_not_answer_doubles_nothing(
    tracking_store, monkeypatch
):
    """The first write lands, then fails (a lost answer): the retry sends the same points."""
    run_id = MlflowClient().create_run("0").info.run_id
    real_log_batch = MlflowClient.log_batch
    calls = []

    def lands_then_fails(self, *args, **kwargs):
        calls.append(args)
        real_log_batch(self, *args, **kwargs)
        if len(calls) == 1:
            raise MlflowException("the answer was lost", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(MlflowClient, "log_batch", lands_then_fails)
    writer = MetricWriter(run_id, first_retry_s=0.01)
    for epoch in (1, 2):
        writer.write(epoch_metrics(epoch).metrics(), step=epoch)
    writer.close()
    assert len(calls) == 3
    for key in EPOCH_KEYS:
        steps = [point.step for point in MlflowClient().get_metric_history(run_id, key)]
        assert sorted(steps) == [1, 2], key


def test_a_server_gone_for_good_fails_the_run_loudly(tracking_store, monkeypatch):
    run_id = MlflowClient().create_run("0").info.run_id

    def refused(self, *args, **kwargs):
        raise MlflowException("connection refused", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(MlflowClient, "log_batch", refused)
    writer = MetricWriter(run_id, gone_after_s=0.05, first_retry_s=0.01, answers=lambda uri: False)
    writer.write({schema.METRIC_TRAIN_LOSS: 1.0}, step=1)
    with pytest.raises(MetricsLostError, match=f"step 1 of run {run_id} and later were not"):
        writer.close()


def test_a_server_that_answers_is_waited_for_however_long_it_refuses(tracking_store, monkeypatch):
    run_id = MlflowClient().create_run("0").info.run_id
    refusals = iter(range(5))
    real_log_batch = MlflowClient.log_batch

    def saturated(self, *args, **kwargs):
        if next(refusals, None) is not None:
            raise MlflowException("too many clients", error_code=TEMPORARILY_UNAVAILABLE)
        real_log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", saturated)
    writer = MetricWriter(run_id, gone_after_s=0, first_retry_s=0.01, answers=lambda uri: True)
    writer.write({schema.METRIC_TRAIN_LOSS: 1.0}, step=1)
    writer.close()
    assert [
        p.step for p in MlflowClient().get_metric_history(run_id, schema.METRIC_TRAIN_LOSS)
    ] == [1]


def test_a_write_the_store_refuses_for_good_is_not_retried(tracking_store):
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    client.delete_run(run_id)
    writer = MetricWriter(run_id, first_retry_s=60)  # a retry would outlast the test
    writer.write({schema.METRIC_TRAIN_LOSS: 1.0}, step=1)
    with pytest.raises(MlflowException) as error:
        writer.close()
    assert error.value.error_code in REFUSED_FOR_GOOD
