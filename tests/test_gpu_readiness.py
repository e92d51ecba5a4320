"""The GPU machinery checked without a GPU (issue 17): the compose trainer, the GPU extra and
benchmarks/gpu_check.sh (its syntax, and a dry run of its stages on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from tests.test_server_deployment import COMPOSE_FILE, ENV_EXAMPLE, REPO, compose_command

GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


def test_the_compose_trainer_asks_for_cuda(tmp_path: Path) -> None:
    """Without a usable GPU the sweep must stop in one line, not fall back to the CPU."""
    command = compose_command()
    if command is None:  # the file as written, then
        trainer = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["trainer"]
    else:
        options = ["-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "--profile", "gpu"]
        result = subprocess.run(
            [*command, *options, "config"], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        trainer = yaml.safe_load(result.stdout)["services"]["trainer"]
    arguments = trainer["command"]
    assert arguments[0] == "sweep"
    assert arguments[arguments.index("--device") + 1] == "cuda"


def test_gpu_runs_install_what_mlflow_reads_gpu_metrics_with() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(
        requirement.startswith("nvidia-ml-py")
        for requirement in project["optional-dependencies"]["gpu"]
    )
    assert (
        'pip install --no-cache-dir ".[gpu]"' in (REPO / "docker" / "train.Dockerfile").read_text()
    )


def test_gpu_check_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_gpu_check_dry_run_prints_and_writes_every_stage_and_survives_a_failed_compile(
    tmp_path: Path,
) -> None:
    out = tmp_path / "figures"
    # No working C++ compiler: Inductor fails, as Triton would on a GPU machine without one.
    env = {**os.environ, "PYTHON": sys.executable, "CXX": "false"}
    result = subprocess.run(
        ["bash", str(GPU_CHECK), "--cpu", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout
    stages = ["device", "throughput", "fit", "fit-deterministic", "compile"]
    starts = [log.index(f"== {stage}\n") for stage in stages]
    assert starts == sorted(starts)  # the uncompiled tables come first
    assert "!! stage compile failed" in log
    assert log.rstrip().endswith("failed stages: compile")
    assert (out / "gpu_check.log").read_text() == log
    assert {path.name for path in out.iterdir()} == {"gpu_check.log", *(f"{s}.txt" for s in stages)}
    assert "mlp       train" in (out / "throughput.txt").read_text()
    deterministic = (out / "fit-deterministic.txt").read_text()
    assert "same seed, same curves: True" in deterministic
    assert "resumed after epoch 1, same final weights: True" in deterministic
    assert [path.name for path in tmp_path.iterdir()] == ["figures"]  # nothing else left
