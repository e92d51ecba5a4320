"""Sweeps on Ray when something stops: Ctrl-C in the driver, a trial's worker process killed.

They share `test_ray_sweep`'s local Ray of 2 CPUs and the session's tracking server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import ray
from mlflow import MlflowClient

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import CHECKPOINT_FILE
from cifar_mlflow.cli import main
from cifar_mlflow.console import EXIT_INTERRUPTED
from tests.test_ray_sweep import experiment_runs, ray_2_cpus  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("ray_2_cpus")]

THREE_TRIALS = "model: mlp\ngrid:\n  activation: [relu, tanh, sigmoid]\n"
ONE_TRIAL = "model: mlp\ngrid:\n  activation: [relu]\n"
TRIAL_TASK = "ray::train_trial"  # the process title Ray gives a worker while it runs the task


def wait_for(condition: Callable[[], object], timeout_s: float = 120) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def ray_sweep(study: Path, epochs: int, data_dir: Path, checkpoint_dir: Path) -> int:
    """`python -m cifar_mlflow sweep --executor ray` in this process (on its Ray): exit status."""
    args = ["--study", str(study), "--executor", "ray", "--epochs", str(epochs)]
    args += ["--dataset", "synthetic", "--data-dir", str(data_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *args, "--checkpoint-dir", str(checkpoint_dir)])
    return exit_info.value.code


def trials_with_an_epoch() -> list:
    _, children = experiment_runs()
    return [c for c in children if schema.METRIC_TRAIN_LOSS in c.data.metrics]


def test_ctrl_c_in_the_driver_ends_the_running_trials_killed(
    server_env, tmp_path, small_synthetic_dir, monkeypatch
):
    study = tmp_path / "three.yaml"
    study.write_text(THREE_TRIALS)
    original_wait = ray.wait
    interrupted = []

    def ctrl_c_once_two_trials_train(*args, **kwargs):
        """The driver's first wait: Ctrl-C arrives once both CPUs' trials have an epoch."""
        if not interrupted:
            interrupted.append(wait_for(lambda: len(trials_with_an_epoch()) == 2))
            raise KeyboardInterrupt
        return original_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", ctrl_c_once_two_trials_train)
    code = ray_sweep(study, 200, small_synthetic_dir, tmp_path / "ck")
    assert code == EXIT_INTERRUPTED
    (parent,), children = experiment_runs()
    assert parent.info.status == "KILLED"
    # The two running trials ended KILLED (resumable); the queued one never started.
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    for child in children:
        assert 0 < len(MlflowClient().get_metric_history(child.info.run_id, "lr")) < 200


def kill_the_trial_once_checkpointed(checkpoint_dir: Path, killed: list[int]) -> None:
    """Kill the worker process running the trial as soon as the trial has a checkpoint."""
    wait_for(lambda: list(checkpoint_dir.glob(f"*/{CHECKPOINT_FILE}")), timeout_s=300)
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [""])[0].startswith(TRIAL_TASK):
            process.kill()
            killed.append(process.pid)


def test_a_trial_whose_worker_is_killed_fails_and_the_next_sweep_continues_its_run(
    server_env, tmp_path, small_synthetic_dir, capsys
):
    study = tmp_path / "one.yaml"
    study.write_text(ONE_TRIAL)
    checkpoints = tmp_path / "ck"
    killed: list[int] = []
    killer = threading.Thread(target=kill_the_trial_once_checkpointed, args=(checkpoints, killed))
    killer.start()
    code = ray_sweep(study, 30, small_synthetic_dir, checkpoints)
    killer.join()
    assert len(killed) == 1
    assert code == 1
    assert "1 of 1 trials failed" in capsys.readouterr().err
    (parent,), (trial,) = experiment_runs()
    assert parent.info.status == "FAILED"
    assert trial.info.status == "RUNNING"  # nobody could end it: the next sweep continues it
    (checkpoint,) = checkpoints.glob(f"*/{CHECKPOINT_FILE}")
    assert checkpoint.parent.name == trial.info.run_id

    assert ray_sweep(study, 30, small_synthetic_dir, checkpoints) == 0
    parents, (continued,) = experiment_runs()
    assert len(parents) == 2
    assert continued.info.run_id == trial.info.run_id
    assert continued.info.status == "FINISHED"
    steps = [
        m.step
        for m in MlflowClient().get_metric_history(trial.info.run_id, schema.METRIC_VALID_ACC)
    ]
    assert sorted(steps) == list(range(1, 31))
    assert continued.data.tags[schema.TAG_PARENT_RUN_ID] != parent.info.run_id
