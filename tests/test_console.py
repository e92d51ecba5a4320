"""A quiet console: by default a run shows its progress lines and result, not MLflow's own
INFO lines (system-metrics monitor) or its pickle warning; `-v` shows them. Each command runs
in a subprocess, as a user runs it: MLflow configures its logging when it is imported, which a
test in this process would not see."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.test_sweep import folders

MLFLOW_LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) mlflow\.", re.M)
MONITOR_STARTED = "INFO mlflow.system_metrics.system_metrics_monitor: Started monitoring"
PICKLE_WARNING = "WARNING mlflow.pytorch: Saving pytorch model by Pickle"
TINY = ["--model", "mlp", "--hidden-sizes", "16", "--dataset", "synthetic", "--epochs", "1"]
TWO_TRIALS = "model: mlp\ngrid:\n  lr: [0.01, 0.001]\n"


def cifar_mlflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", *args], capture_output=True, text=True, check=False
    )


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

