"""Reliability (issue 7): resume after SIGKILL, SIGTERM, divergence, a tracking-server outage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import checkpoint_path, load_checkpoint
from cifar_mlflow.server import launcher
from cifar_mlflow.server.postgres import free_port

pytestmark = pytest.mark.e2e

# Epochs of about a second on this CPU: long enough to stop a run between two of them.
TRAIN = ["--dataset", "synthetic", "--train-size", "2000", "--epochs", "4"]


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cifar_mlflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", *args], capture_output=True, text=True, check=False
    )


def stop_after(process: subprocess.Popen, line_part: str, sig: signal.Signals) -> str:
    """Send `sig` as soon as the process prints a line containing `line_part`."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line_part in line:
            process.send_signal(sig)
            break
    seen.append(process.communicate(timeout=120)[0])
    return "".join(seen)


def only_run(experiment: str = "cifar10"):
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def points_per_epoch(run_id: str) -> dict[str, list[int]]:
    client = MlflowClient()
    return {
        name: sorted(m.step for m in client.get_metric_history(run_id, name))
        for name in schema.EPOCH_METRICS
    }


def logged_weights(run_id: str) -> dict[str, torch.Tensor]:
    (model,) = MlflowClient().search_logged_models(
        experiment_ids=[MlflowClient().get_run(run_id).info.experiment_id],
        filter_string=f"{schema.LOGGED_MODEL_SOURCE_RUN} = '{run_id}'",
    )
    return mlflow.pytorch.load_model(model.model_uri).state_dict()


def test_sigkill_then_resume_finishes_the_same_run_with_the_uninterrupted_weights(
    tracking_store, tmp_path
):
    data = ["--data-dir", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ck")]
    killed = start_cli("train", *TRAIN, *data)
    output = stop_after(killed, "epoch 2/4", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, output
    run = only_run()
    assert run.info.status == "RUNNING"  # nobody could end it
    assert checkpoint_path(tmp_path / "ck", run.info.run_id).exists()

    resumed = run_cli("train", "--resume", run.info.run_id)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = only_run()
    assert run.info.status == "FINISHED"
    every_epoch_once = {name: [1, 2, 3, 4] for name in schema.EPOCH_METRICS}
    assert points_per_epoch(run.info.run_id) == every_epoch_once
    assert not checkpoint_path(tmp_path / "ck", run.info.run_id).exists()

    uninterrupted = run_cli("train", *TRAIN, *data, "--experiment", "uninterrupted")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    reference = only_run("uninterrupted")
    ours, theirs = logged_weights(run.info.run_id), logged_weights(reference.info.run_id)
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_sigterm_leaves_the_run_killed_and_resumable(tracking_store, tmp_path):
    data = ["--data-dir", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ck")]
    process = start_cli("train", *TRAIN, *data)
    output = stop_after(process, "epoch 1/4", signal.SIGTERM)
    assert process.returncode not in (0, -signal.SIGTERM), output
    assert "KILLED" in output and "Traceback" not in output
    run = only_run()
    assert run.info.status == "KILLED"
    assert checkpoint_path(tmp_path / "ck", run.info.run_id).exists()
    resumed = run_cli("train", "--resume", run.info.run_id)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert only_run().info.status == "FINISHED"
    assert points_per_epoch(run.info.run_id)[schema.METRIC_TRAIN_LOSS] == [1, 2, 3, 4]


def trial_run_id(activation: str) -> str | None:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("cifar10")
    if experiment is None:
        return None
    trial = f"tags.{schema.TAG_ROLE} = '{schema.ROLE_TRIAL}' and params.activation = '{activation}'"
    runs = client.search_runs([experiment.experiment_id], trial)
    return runs[0].info.run_id if runs else None


def wait_for_checkpoint(process: subprocess.Popen, checkpoint_dir: Path, activation: str) -> Path:
    """The checkpoint of the trial with `activation`, as soon as it is on disk (polled)."""
    path = None
    while process.poll() is None:
        if path is None:
            run_id = trial_run_id(activation)  # its params are logged before its first epoch
            path = checkpoint_path(checkpoint_dir, run_id) if run_id else None
            time.sleep(0.2)  # queries compete with the sweep for the store and the CPUs
        elif path.exists():
            return path
        else:
            time.sleep(0.01)
    raise AssertionError(f"the sweep ended before the {activation} trial's checkpoint was seen")


def test_a_killed_sweep_run_again_continues_the_trial_from_its_checkpoint(tracking_store, tmp_path):
    sweep = ["sweep", "--study", "activation", "--dataset", "synthetic", "--epochs", "3"]
    sweep += ["--train-size", "2000", "--data-dir", str(tmp_path / "data")]
    sweep += ["--checkpoint-dir", str(tmp_path / "ck")]
    process = subprocess.Popen(
        [sys.executable, "-m", "cifar_mlflow", *sweep],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        checkpoint = wait_for_checkpoint(process, tmp_path / "ck", "tanh")
    finally:
        process.kill()
        process.wait()
    trained_before = load_checkpoint(checkpoint).epoch
    assert trained_before < 3  # killed while the trial was training

    again = run_cli(*sweep)
    assert again.returncode == 0, again.stderr[-2000:]
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("cifar10").experiment_id
    trials = client.search_runs([experiment_id], f"tags.{schema.TAG_ROLE} = '{schema.ROLE_TRIAL}'")
    assert sorted(r.data.params["activation"] for r in trials) == ["relu", "sigmoid", "tanh"]
    assert {r.info.status for r in trials} == {"FINISHED"}
    continued = next(r for r in trials if r.data.params["activation"] == "tanh")
    assert continued.info.run_id == checkpoint.parent.name
    assert points_per_epoch(continued.info.run_id)[schema.METRIC_VALID_ACC] == [1, 2, 3]
    # The second process trained only the epochs after the checkpoint.
    label = "mlp-acttanh-seed42"
    assert f"{label}: resumed after epoch {trained_before}" in again.stderr
    trained_again = re.findall(rf"{label} epoch (\d+)/3", again.stderr)
    assert trained_again == [str(e) for e in range(trained_before + 1, 4)], again.stderr


def test_a_diverging_loss_ends_the_run_failed_with_the_reason(tracking_store, tmp_path):
    result = run_cli(
        "train", "--lr", "1e3", *TRAIN, "--data-dir", str(tmp_path / "data"),
        "--checkpoint-dir", str(tmp_path / "ck"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    run = only_run()
    assert run.info.status == "FAILED"
    assert "training loss diverged" in run.data.tags[schema.TAG_FAILURE_REASON]


def test_metrics_survive_a_20_s_server_outage_exactly_once(tmp_path, monkeypatch, own_server_dir):
    data_dir = own_server_dir
    port = free_port()
    running = launcher.start(data_dir, port=port)
    env = {
        **os.environ,
        **running.env,
        "MLFLOW_EXPERIMENT_NAME": "outage",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
    }
    epochs = ["--epochs", "12", "--train-size", "2000", "--dataset", "synthetic"]
    folders = ["--data-dir", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ck")]
    process = start_cli("train", *epochs, *folders, env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch 2/12" in line:
            break
    launcher.stop(data_dir)
    time.sleep(20)
    running = launcher.start(data_dir, port=port)
    lines.append(process.communicate(timeout=300)[0])
    assert process.returncode == 0, "".join(lines)[-3000:]
    for name, value in running.env.items():
        monkeypatch.setenv(name, value)
    run = only_run("outage")
    assert run.info.status == "FINISHED"
    expected = list(range(1, 13))
    assert points_per_epoch(run.info.run_id) == {n: expected for n in schema.EPOCH_METRICS}
