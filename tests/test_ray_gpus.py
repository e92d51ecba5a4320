"""What a Ray trial sees of the GPUs (issue 17), on a CPU machine with logical GPUs.

`ray.init(num_gpus=2)` declares two GPUs that do not exist: Ray still assigns them to tasks
and sets CUDA_VISIBLE_DEVICES, which is all a trial's CUDA would read. The machine's own
variable lists both, as a GPU machine's environment would. One Ray instance for the module.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import ray

from cifar_mlflow.sweeps.ray_options import RayOptions
from cifar_mlflow.sweeps.ray_tasks import as_trial_task, prepare_worker


@pytest.fixture(scope="module")
def ray_2_gpus() -> Iterator[None]:
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"  # inherited by Ray's workers
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()
    if before is None:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = before


def what_a_trial_sees(options: RayOptions) -> tuple[str | None, int]:
    """A trial task's view, through the project's task options and worker preparation."""
    prepare_worker(options)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def unprepared_view() -> tuple[str | None, int]:
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def run_trials_one_by_one(options: RayOptions, count: int) -> list[tuple[str | None, int]]:
    """What each of `count` trials saw; one at a time, so that an idle worker could serve all."""
    task = as_trial_task(what_a_trial_sees, options)
    return [ray.get(task.remote(options)) for _ in range(count)]


def test_ray_leaves_the_gpus_visible_to_a_task_that_reserves_none(ray_2_gpus):
    """The defect the preparation mends: Ray alone does not hide them."""
    visible, _ = ray.get(ray.remote(unprepared_view).options(num_gpus=0).remote())
    assert visible == "0,1"


def test_a_trial_with_no_gpu_sees_none(ray_2_gpus):
    views = run_trials_one_by_one(RayOptions(gpus_per_trial=0), count=2)
    assert {visible for visible, _ in views} == {""}


def test_a_trial_with_half_a_gpu_sees_only_its_gpu_in_a_fresh_worker(ray_2_gpus):
    views = run_trials_one_by_one(RayOptions(gpus_per_trial=0.5), count=2)
    assert {visible for visible, _ in views} <= {"0", "1"}
    assert len({pid for _, pid in views}) == 2


def test_ray_reuses_a_worker_for_gpu_tasks_by_default(ray_2_gpus):
    """Why the trials need `max_calls=1`: without it, GPU tasks share a process."""
    task = ray.remote(unprepared_view).options(num_gpus=0.5)
    pids = [ray.get(task.remote())[1] for _ in range(2)]
    assert pids[0] == pids[1]


def test_a_trial_worker_touches_no_cuda_before_the_task_hides_the_gpus():
    """Importing the task's modules must not initialise CUDA, which would fix its devices."""
    program = """
import torch
calls = []
for name in ("_cuda_getDeviceCount", "_cuda_init"):
    original = getattr(torch._C, name)
    def record(*args, _name=name, _original=original):
        calls.append(_name)
        return _original(*args)
    setattr(torch._C, name, record)
import cifar_mlflow.sweeps.ray_executor
import cifar_mlflow.training
print(calls)
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
