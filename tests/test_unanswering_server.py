"""A tracking server that accepts connections but never answers is reported in one line, fast.

MLflow's own client would wait on such a server for minutes, retrying; every command checks the
server first, with a timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from analysis import figures
from cifar_mlflow import cli

REPORTED_WITHIN_S = 10


@pytest.fixture(scope="module", autouse=True)
def imported_commands() -> None:
    """What the commands import lazily (torch, MLflow's tracking), imported beforehand.

    The time measured is then the wait on the server: importing takes from 3 s to over 15 s on
    this shared 2-core machine, depending on its load.
    """
    import cifar_mlflow.progress
    import cifar_mlflow.sweeps.sweep
    import cifar_mlflow.training  # noqa: F401


@pytest.fixture
def unanswering_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A server on 127.0.0.1 that accepts every connection and then says nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # kept open, never read or answered
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    stop.set()
    thread.join()
    for connection in [*accepted, listener]:
        connection.close()
    assert accepted  # the commands did connect


def one_error_line(err: str, uri: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"Error: tracking server {uri} is unreachable"), err


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--dataset", "synthetic", "--epochs", "1"],
        ["sweep", "--study", "activation", "--dataset", "synthetic", "--epochs", "1"],
    ],
    ids=["train", "sweep"],
)
def test_training_commands_report_it_in_one_line(unanswering_server, tmp_path, capsys, args):
    capsys.readouterr()
    start = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        cli.main([*args, "--data-dir", str(tmp_path / "data")])
    assert time.monotonic() - start < REPORTED_WITHIN_S
    assert exited.value.code == 2
    one_error_line(capsys.readouterr().err, unanswering_server)
    assert not (tmp_path / "data").exists()  # before touching the data


def test_the_analysis_reports_it_in_one_line(unanswering_server):
    start = time.monotonic()
    result = CliRunner().invoke(figures.main, ["--study", "lr"])
    assert time.monotonic() - start < REPORTED_WITHIN_S
    assert result.exit_code == 2
    one_error_line(result.output, unanswering_server)
