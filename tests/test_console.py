"""A quiet console: by default a run shows its progress lines and result, not MLflow's own
INFO lines (system-metrics monitor) or its pickle warning; `-v` shows them. Each command runs
in a subprocess, as a user runs it: MLflow configures its logging when it is imported, which a
test in this process would not see."""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cifar_mlflow import console
from cifar_mlflow.cli import main
from tests.test_sweep import folders

MLFLOW_LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) mlflow\.", re.M)
MONITOR_STARTED = "INFO mlflow.system_metrics.system_metrics_monitor: Started monitoring"
PICKLE_WARNING = "WARNING mlflow.pytorch: Saving pytorch model by Pickle or CloudPickle format"
TINY = ["--model", "mlp", "--hidden-sizes", "16", "--dataset", "synthetic", "--epochs", "1"]
TWO_TRIALS = "model: mlp\ngrid:\n  lr: [0.01, 0.001]\n"


def cifar_mlflow(*args: str) -> subprocess.CompletedProcess:
    """`python -m cifar_mlflow ARGS` as a user runs it, without a logging level of its own."""
    env = {k: v for k, v in os.environ.items() if k != console.LOGGING_LEVEL_VARIABLE}
    command = [sys.executable, "-m", "cifar_mlflow", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env)


@pytest.mark.e2e
def test_a_sweep_shows_its_progress_and_no_mlflow_noise(
    tracking_store, tmp_path, small_synthetic_dir
):
    study = tmp_path / "two.yaml"
    study.write_text(TWO_TRIALS)
    done = cifar_mlflow("sweep", "--study", str(study), *TINY, *folders(small_synthetic_dir))
    assert done.returncode == 0, done.stderr
    assert MLFLOW_LOG_LINE.findall(done.stderr) == [], done.stderr
    assert "View run" not in done.stdout  # MLflow's second link per run, beside the project's
    # What is left: the trials' progress lines and results, and the sweep's summary.
    assert done.stderr.count("epoch 1/1") == 2 and "Sweep two: 2 finished" in done.stdout


@pytest.mark.e2e
def test_verbose_shows_mlflow_own_lines(tracking_store, small_synthetic_dir):
    done = cifar_mlflow("train", "-v", *TINY, *folders(small_synthetic_dir))
    assert done.returncode == 0, done.stderr
    assert MONITOR_STARTED in done.stderr and PICKLE_WARNING in done.stderr


@pytest.fixture
def ray_workers_at_info(tracking_store) -> Iterator[Path]:
    """A Ray instance whose workers start with MLflow at INFO, as on a cluster whose machines
    have an environment of their own; yields its log folder (the workers' stderr)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("this process is connected to another Ray instance")
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"MLFLOW_LOGGING_LEVEL": "INFO"}},
    )
    yield Path(context.address_info["session_dir"]) / "logs"
    ray.shutdown()


def worker_output(logs: Path) -> dict[Path, str]:
    return {path: path.read_text(errors="replace") for path in logs.glob("worker-*.err")}


def ray_sweep(*args: str, data_dir: Path, study: Path) -> int:
    """A Ray sweep in this process, on its Ray instance: the exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["sweep", *args, "--study", str(study), "--executor", "ray", *TINY, *folders(data_dir)]
        )
    return exit_info.value.code


@pytest.mark.e2e
def test_ray_trials_log_as_quietly_as_the_sweep(
    ray_workers_at_info, small_synthetic_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv(console.LOGGING_LEVEL_VARIABLE, raising=False)  # restored afterwards
    study = tmp_path / "two.yaml"
    study.write_text(TWO_TRIALS)
    assert ray_sweep(data_dir=small_synthetic_dir, study=study) == 0
    quiet = worker_output(ray_workers_at_info)
    assert "epoch 1/1" in "".join(quiet.values())  # the trials' own lines are there
    assert MLFLOW_LOG_LINE.findall("".join(quiet.values())) == []

    study.write_text(TWO_TRIALS.replace("0.01", "0.1"))  # one new trial
    assert ray_sweep("-v", data_dir=small_synthetic_dir, study=study) == 0
    verbose = {
        path: text[len(quiet.get(path, "")) :]
        for path, text in worker_output(ray_workers_at_info).items()
    }
    assert MONITOR_STARTED in "".join(verbose.values())


@pytest.mark.parametrize(
    ("variable", "verbose", "level"),
    [(None, False, "WARNING"), ("INFO", False, "INFO"), (None, True, "INFO")],
)
def test_the_level_is_the_flag_else_mlflow_logging_level_else_warning(
    monkeypatch, request, variable, verbose, level
):
    # MLFLOW_LOGGING_LEVEL is how a user asks for MLflow's lines under `mlflow run`.
    mlflow_logger = logging.getLogger("mlflow")
    request.addfinalizer(functools.partial(mlflow_logger.setLevel, mlflow_logger.level))
    if variable is None:
        monkeypatch.delenv(console.LOGGING_LEVEL_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(console.LOGGING_LEVEL_VARIABLE, variable)
    with pytest.raises(SystemExit):
        console.command()(lambda: None).main([*(["-v"] if verbose else [])])
    assert logging.getLevelName(mlflow_logger.getEffectiveLevel()) == level
