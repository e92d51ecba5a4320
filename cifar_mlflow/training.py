"""One tracked training run: data → engine (with checkpoints) → MLflow."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import TrainingState, checkpoint_path, load_checkpoint
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays, to_device
from cifar_mlflow.engine import Callback, fit
from cifar_mlflow.environment import environment_for
from cifar_mlflow.errors import NotResumableError
from cifar_mlflow.schema import FinalMetrics
from cifar_mlflow.tracking.callback import MlflowCallback
from cifar_mlflow.tracking.lookups import logged_epochs, run_by_id
from cifar_mlflow.tracking.runs import training_run

if TYPE_CHECKING:
    from mlflow.entities import Run


def train_tracked(
    config: TrainConfig,
    arrays: CifarArrays,
    *,
    study: str = schema.NO_STUDY,
    run_id: str | None = None,
    experiment: str | None = None,
    callbacks: Sequence[Callback] = (),
    resume: TrainingState | None = None,
) -> tuple[Run, FinalMetrics | None]:
    """Train `config` on `arrays` inside a tracked run; returns the finished run.

    A run that a callback stopped early (see `engine.StopTraining`) ends FINISHED with its
    `stopped_at_epoch` tag and no final metrics (None).

    Each epoch is checkpointed; with `resume` (the checkpoint of run `run_id`) training
    continues after its epoch, and epochs the server never received are logged first.
    """
    env = environment_for(config)
    data = to_device(arrays, config, env.device, env.memory_format)
    with training_run(config, run_id=run_id, experiment=experiment) as run:
        run_id = run.info.run_id
        checkpoint = checkpoint_path(config.checkpoint_dir, run_id)
        tracker = MlflowCallback(
            run,
            config,
            arrays,
            study=study,
            env=env,
            logged_epochs=logged_epochs(run),
        )
        with tracker:
            _, final = fit(config, data, env, [*callbacks, tracker], resume, checkpoint)
    # A finished run needs no checkpoint; a failed or killed one keeps it for --resume.
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return run_by_id(run_id), final


def last_checkpoint(config: TrainConfig, run_id: str) -> TrainingState | None:
    """The checkpoint run `run_id` left after its last epoch, if it left one."""
    return load_checkpoint(checkpoint_path(config.checkpoint_dir, run_id))


def resumable_run(run_id: str) -> tuple[Run, TrainConfig, TrainingState]:
    """The run to continue, its configuration and its last checkpoint."""
    run = run_by_id(run_id)
    if run.info.status == "FINISHED":
        raise NotResumableError(f"run {run_id} already FINISHED; nothing to resume")
    config = TrainConfig.from_params(run.data.params)
    state = last_checkpoint(config, run_id)
    if state is None:
        raise NotResumableError(
            f"run {run_id} has no checkpoint in {config.checkpoint_dir}; it cannot be resumed"
        )
    return run, config, state
