"""Resuming a run logs each epoch exactly once, whichever of server and checkpoint is ahead.

The two states a kill can leave are built directly, without signals: a callback stops the run
at a chosen point of an epoch, and a checkpoint is put back from an earlier epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Param

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import CHECKPOINT_FILE, checkpoint_path, load_checkpoint
from cifar_mlflow.cli import cli, main
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import load_arrays
from cifar_mlflow.engine import Callback
from cifar_mlflow.schema import EpochMetrics
from cifar_mlflow.training import train_tracked
from tests.test_mlproject import BIN, REPO

EPOCHS = 4


class Crash(Exception):
    pass


class Interrupt(KeyboardInterrupt):
    """Ctrl-C at a chosen point: the run ends KILLED."""


class CrashAtEpochEnd(Callback):
    """Raises at the end of epoch `epoch`, before the run's tracker reports it.

    The engine holds the epoch's state for its checkpoint before any report and writes it when
    training ends, so the checkpoint has the epoch and the server does not. With
    `keep_checkpoint_of`, the checkpoint of that epoch is copied to `kept` while it is the one
    on disk (at the next epoch's end, the engine has waited for its write).
    """

    def __init__(
        self,
        epoch: int,
        checkpoint_dir: str,
        keep_checkpoint_of: int = 0,
        error: type[BaseException] = Crash,
    ) -> None:
        self.epoch = epoch
        self.checkpoint_dir = checkpoint_dir
        self.keep_checkpoint_of = keep_checkpoint_of
        self.error = error
        self.kept = Path(checkpoint_dir) / "kept.pt"

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        if self.keep_checkpoint_of and metrics.epoch == self.keep_checkpoint_of + 1:
            # The only run training here: no run is active in the process to ask for its id.
            (path,) = Path(self.checkpoint_dir).glob(f"*/{CHECKPOINT_FILE}")
            shutil.copyfile(path, self.kept)
        if metrics.epoch == self.epoch:
            raise self.error(f"stopped at the end of epoch {metrics.epoch}")


@pytest.fixture
def config(tracking_store, tmp_path, small_synthetic_dir) -> TrainConfig:
    return TrainConfig.from_overrides(
        {
            "dataset": "synthetic",
            "data_dir": str(small_synthetic_dir),
            "hidden_sizes": (64,),
            "epochs": EPOCHS,
            "checkpoint_dir": str(tmp_path / "ck"),
        }
    )


def crashed_run(config: TrainConfig, crash: CrashAtEpochEnd) -> str:
    """A run of `config` stopped by `crash` (left FAILED or KILLED, with its checkpoint)."""
    with pytest.raises(crash.error):
        train_tracked(config, load_arrays(config), callbacks=[crash])
    (run,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(schema.DEFAULT_EXPERIMENT).experiment_id]
    )
    assert run.info.status == ("KILLED" if crash.error is Interrupt else "FAILED")
    return run.info.run_id


def steps_per_metric(run_id: str) -> dict[str, list[int]]:
    client = MlflowClient()
    return {
        name: sorted(m.step for m in client.get_metric_history(run_id, name))
        for name in schema.EPOCH_METRICS
    }


def resume(run_id: str) -> None:
    result = CliRunner().invoke(cli, ["train", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_the_checkpoint_ahead_of_the_server_logs_its_epochs_once(config):
    # Epochs 1-2 trained and checkpointed; the server received epoch 1 only.
    run_id = crashed_run(config, CrashAtEpochEnd(epoch=2, checkpoint_dir=config.checkpoint_dir))
    assert load_checkpoint(checkpoint_path(config.checkpoint_dir, run_id)).epoch == 2
    assert steps_per_metric(run_id) == {name: [1] for name in schema.EPOCH_METRICS}

    resume(run_id)
    every_epoch_once = {name: list(range(1, EPOCHS + 1)) for name in schema.EPOCH_METRICS}
    assert steps_per_metric(run_id) == every_epoch_once


def test_the_server_ahead_of_the_checkpoint_logs_its_epochs_once(config):
    # The server received epochs 1-3; the checkpoint on disk is put back to that of epoch 2.
    crash = CrashAtEpochEnd(epoch=4, checkpoint_dir=config.checkpoint_dir, keep_checkpoint_of=2)
    run_id = crashed_run(config, crash)
    path = checkpoint_path(config.checkpoint_dir, run_id)
    shutil.copyfile(crash.kept, path)
    assert load_checkpoint(path).epoch == 2
    assert steps_per_metric(run_id) == {name: [1, 2, 3] for name in schema.EPOCH_METRICS}

    resume(run_id)
    every_epoch_once = {name: list(range(1, EPOCHS + 1)) for name in schema.EPOCH_METRICS}
    assert steps_per_metric(run_id) == every_epoch_once


def test_the_resume_entry_point_finishes_a_killed_run(config, tracking_store):
    crash = CrashAtEpochEnd(epoch=2, checkpoint_dir=config.checkpoint_dir, error=Interrupt)
    run_id = crashed_run(config, crash)
    command = [str(BIN / "mlflow"), "run", ".", "--env-manager", "local", "-e", "resume"]
    command += ["--experiment-name", schema.DEFAULT_EXPERIMENT, "-P", f"run_id={run_id}"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # set by the crashed run's `mlflow.set_experiment`
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    every_epoch_once = {name: list(range(1, EPOCHS + 1)) for name in schema.EPOCH_METRICS}
    assert steps_per_metric(run_id) == every_epoch_once
    launcher = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        f"tags.{schema.TAG_RESUMED_RUN_ID} = '{run_id}'",
    )
    assert [r.info.status for r in launcher] == ["FINISHED"]


def ended_run(config: TrainConfig, status: str) -> str:
    """A run with `config`'s params that ended `status`, without any checkpoint."""
    client = MlflowClient()
    experiment_id = client.create_experiment(schema.DEFAULT_EXPERIMENT)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in config.to_params().items()])
    client.set_terminated(run_id, status)
    return run_id


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", r"no run with id '0{32}' on sqlite:///.*mlflow\.db"),
        ("finished", r"run [0-9a-f]{32} already FINISHED; nothing to resume"),
        ("no-checkpoint", r"run [0-9a-f]{32} has no checkpoint in .*ck; it cannot be resumed"),
        ("other-options", r"--resume continues a run with its own options; give no other option"),
    ],
)
def test_resume_user_errors_are_one_line_with_status_2(config, capsys, case, message):
    run_id = {
        "unknown": lambda: "0" * 32,
        "finished": lambda: ended_run(config, "FINISHED"),
        "no-checkpoint": lambda: ended_run(config, "KILLED"),
        "other-options": lambda: ended_run(config, "KILLED"),
    }[case]()
    extra = ["--epochs", "7"] if case == "other-options" else []
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["train", "--resume", run_id, *extra])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert re.fullmatch(f"Error: {message}\n", err), err
    if case != "unknown":
        assert MlflowClient().get_run(run_id).info.status != "RUNNING"  # nothing was started
