"""One tracked training run: data → engine (with checkpoints) → MLflow."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from mlflow import MlflowClient
from mlflow.entities import Run

from cifar_mlflow import schema
from cifar_mlflow.checkpoint import TrainingState, checkpoint_path
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays, to_device
from cifar_mlflow.engine import Callback, fit
from cifar_mlflow.environment import environment_for
from cifar_mlflow.schema import FinalMetrics
from cifar_mlflow.tracking.callback import MlflowCallback
from cifar_mlflow.tracking.lookups import logged_epochs
from cifar_mlflow.tracking.runs import training_run


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
    return MlflowClient().get_run(run_id), final
