"""How a trial becomes a Ray task: what it reserves, which worker runs it, what it sees there.

Kept apart from `ray_executor` (and free of MLflow) so that a worker pays only for torch to
prepare itself, and tests can run their own probes through the same path.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ray
import torch

from cifar_mlflow.sweeps.ray_options import RayOptions


def as_trial_task(
    function: Callable[..., object], options: RayOptions
) -> ray.remote_function.RemoteFunction:
    """`function` as the Ray task of one trial, reserving what `options` asks for.

    Ray ends a worker after `max_calls` tasks only when it is given to `ray.remote`, not to
    `.options`. A GPU trial gets a fresh process: a reused one keeps its first task's GPU
    numbering (two trials on one GPU while another idles), its CUDA context and its cached GPU
    memory. A CPU trial's worker is reused: Ray's workers serve one driver, and a sweep's
    trials all reserve the same.
    """
    max_calls = 1 if options.gpus_per_trial > 0 else 0  # 0: no limit
    return ray.remote(max_calls=max_calls)(function).options(
        num_cpus=options.cpus_per_trial,
        num_gpus=options.gpus_per_trial,
        # A retried task would start over on a new worker; the next sweep continues the
        # trial from its checkpoint instead.
        max_retries=0,
    )


def prepare_worker(options: RayOptions) -> None:
    """Make the task's process see only what the trial reserved; first thing in the task.

    Ray sets CUDA_VISIBLE_DEVICES for a task that reserves GPUs but leaves it as it was for
    one that reserves none (Ray 2.60 does so unless RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1):
    such a trial would see every GPU, pick `cuda:0` and crowd it outside Ray's accounting.
    CUDA reads the variable once, when the process first asks for a device, so it is set
    before anything touches CUDA; nothing the task's modules run at import does.
    """
    if options.gpus_per_trial == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # Ray sets OMP_NUM_THREADS for the task, but torch may have read it in an earlier task of
    # this worker process: trials that share a machine must not oversubscribe its cores.
    torch.set_num_threads(max(1, int(options.cpus_per_trial)))
