"""Sweeps on Ray (issue 8): parallel trials on the team server, reuse, failures, refusals.

The Ray tests share one local Ray instance of 2 CPUs, started in this process: a sweep uses
the instance its process is connected to, so the number of trials at a time is known here
whatever the machine.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch
from mlflow import MlflowClient

from cifar_mlflow import schema
from cifar_mlflow.cli import main
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.sweeps import ray_executor, ray_tasks
from cifar_mlflow.sweeps.ray_executor import is_local_address, is_local_store
from cifar_mlflow.sweeps.ray_options import RayOptions
from cifar_mlflow.sweeps.trials import Trial
from tests.test_sweep import SMALL, folders, mlflow_run_sweep, parents_and_children

# The sweep benchmarks/ray_sweep.py times: four trials of a narrow Mixer, seconds each here.
FOUR_TRIALS = [
    "--study",
    str(Path(__file__).resolve().parents[1] / "benchmarks" / "ray_sweep_study.yaml"),
]
# Valid for the configuration, but the first layer cannot be allocated: fails in training.
TOO_WIDE = "model: mlp\ngrid:\n  hidden_sizes: [[64], [100000000000]]\n  activation: [relu]\n"


@pytest.fixture(scope="module")
def ray_2_cpus() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def sweep(*args: str, data_dir: Path) -> int:
    """`python -m cifar_mlflow sweep ARGS` in this process (on its Ray): the exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *args, *SMALL, *folders(data_dir)])
    return exit_info.value.code


def experiment_runs() -> tuple[list, list]:
    """The sweeps (parents) and trials (children) of this test's experiment."""
    return parents_and_children(os.environ["MLFLOW_EXPERIMENT_NAME"])


def most_at_once(runs: list) -> int:
    """The largest number of runs whose [start, end] intervals share a moment."""
    return max(
        sum(other.info.start_time <= run.info.start_time <= other.info.end_time for other in runs)
        for run in runs
    )


def summary_line(stderr_or_stdout: str) -> str:
    """The sweep's last line without the link to its parent run (which differs per sweep)."""
    line = [line for line in stderr_or_stdout.splitlines() if line.startswith("Sweep ")][-1]
    return line.rsplit(". ", 1)[0]


@pytest.mark.e2e
def test_four_trials_run_two_at_a_time_then_rerun_reuses_all(
    server_env, small_synthetic_dir, ray_2_cpus, capsys
):
    code = sweep(*FOUR_TRIALS, "--executor", "ray", data_dir=small_synthetic_dir)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Sweep ray_sweep_study: 4 finished, 0 reused." in out
    (parent,), children = experiment_runs()
    assert parent.info.status == "FINISHED"
    assert parent.data.params["executor"] == "ray"
    assert parent.data.params["cpus_per_trial"] == "1"
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags[schema.TAG_PARENT_RUN_ID] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["lr"]) for c in children) == [0.0001, 0.0003, 0.001, 0.003]
    # Two CPUs, one per trial: two trials at a time, never more.
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(children, 2)
        if a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    ]
    assert len(overlapping) >= 2
    assert most_at_once(children) == 2
    assert parent.data.metrics[schema.METRIC_TRIALS_FINISHED] == 4
    best = max(children, key=lambda c: c.data.metrics[schema.METRIC_BEST_VALID_ACC])
    assert parent.data.tags[schema.TAG_BEST_RUN_ID] == best.info.run_id

    # The same sweep again: nothing is dispatched, all four are referenced as reused.
    code = sweep(*FOUR_TRIALS, "--executor", "ray", data_dir=small_synthetic_dir)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Sweep ray_sweep_study: 0 finished, 4 reused." in out
    parents, children_after = experiment_runs()
    assert len(parents) == 2
    assert {c.info.run_id for c in children_after} == {c.info.run_id for c in children}
    newest = max(parents, key=lambda r: r.info.start_time)
    assert newest.info.status == "FINISHED"
    reused = set(newest.data.tags[schema.TAG_REUSED_RUN_IDS].split(","))
    assert reused == {c.info.run_id for c in children}
    assert newest.data.metrics[schema.METRIC_TRIALS_REUSED] == 4
    assert newest.data.metrics[schema.METRIC_TRIALS_FINISHED] == 0


@pytest.mark.e2e
def test_failing_trial_is_reported_as_with_the_local_executor(
    server_env, tmp_path, small_synthetic_dir, ray_2_cpus, capsys
):
    study = tmp_path / "too_wide.yaml"
    study.write_text(TOO_WIDE)
    assert sweep("--study", str(study), "--executor", "ray", data_dir=small_synthetic_dir) == 1
    on_ray = capsys.readouterr().err
    (parent,), children = experiment_runs()
    by_width = {c.data.params["hidden_sizes"]: c for c in children}
    assert by_width["64"].info.status == "FINISHED"
    failed = by_width["100000000000"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags[schema.TAG_FAILURE_REASON]
    assert f"FAILED mlp-actrelu-seed42: {failed.data.tags[schema.TAG_FAILURE_REASON]}" in on_ray
    assert parent.info.status == "FAILED"
    assert parent.data.metrics[schema.METRIC_TRIALS_FAILED] == 1

    # The local executor, on the same experiment: it reuses the finished trial, fails the
    # other one again, and says so in the same words.
    assert sweep("--study", str(study), data_dir=small_synthetic_dir) == 1
    locally = capsys.readouterr().err
    assert summary_line(locally) == summary_line(on_ray)
    assert summary_line(on_ray) == "Sweep too_wide: 1 of 2 trials failed: mlp-actrelu-seed42"


@pytest.mark.e2e
def test_mlflow_run_passes_the_ray_parameters(server_env, tmp_path, small_synthetic_dir):
    """`mlflow run -e sweep -P executor=ray`: its run is the parent, Ray starts and stops."""
    study = tmp_path / "two.yaml"
    study.write_text("model: mlp\ngrid:\n  activation: [relu, tanh]\n")
    result = mlflow_run_sweep(
        f"study={study}",
        "executor=ray",
        "ray_address=local",
        "cpus_per_trial=1",
        "gpus_per_trial=0",
        data_dir=small_synthetic_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children = experiment_runs()
    assert parent.info.status == "FINISHED"
    assert parent.data.params["ray_address"] == "local"
    assert sorted(c.data.params["activation"] for c in children) == ["relu", "tanh"]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags[schema.TAG_PARENT_RUN_ID] for c in children} == {parent.info.run_id}


def test_without_ray_installed_executor_ray_is_one_line_exit_2(tracking_store):
    # `None` in sys.modules makes `import ray` fail as if Ray were not installed.
    program = (
        "import sys; sys.modules['ray'] = None; from cifar_mlflow.cli import main; "
        "main(sys.argv[1:])"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, "sweep", "--study", "lr", "--executor", "ray"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: executor=ray needs Ray") and "pip install" in line
    assert MlflowClient().search_runs(["0"]) == []
    assert MlflowClient().get_experiment_by_name("cifar10") is None


def test_sqlite_store_with_a_remote_cluster_is_refused_before_anything_starts(
    tracking_store, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--study", "lr", "--executor", "ray", "--ray-address", "10.1.2.3:6379"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"tracking URI {tracking_store} is only reachable from this machine" in line
    assert "10.1.2.3:6379" in line
    assert MlflowClient().get_experiment_by_name("cifar10") is None


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("", True),
        ("local", True),
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("ray://127.0.0.1:10001", True),
        ("[::1]:6379", True),
        ("auto", False),
        ("10.1.2.3:6379", False),
        ("ray://head.cluster.svc:10001", False),
        ("head:6379", False),
    ],
)
def test_which_ray_addresses_are_this_machine(address, local):
    assert is_local_address(address) is local


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("sqlite:///mlflow.db", True),
        ("sqlite:////abs/mlflow.db", True),
        ("file:///tmp/mlruns", True),
        ("./mlruns", True),
        ("http://127.0.0.1:5000", True),
        ("http://localhost:5000", True),
        ("postgresql://mlflow@localhost/mlflow", True),
        ("http://mlflow.team.example:5000", False),
        ("https://10.0.0.5", False),
        ("postgresql://mlflow@db.internal/mlflow", False),
        ("databricks", False),
    ],
)
def test_which_tracking_stores_only_this_machine_reaches(uri, local):
    assert is_local_store(uri) is local


@pytest.mark.parametrize(("cpus", "threads"), [(2.0, 2), (0.5, 1)])
def test_cpus_per_trial_sets_the_trials_torch_threads(monkeypatch, cpus, threads):
    # The trial's task reserves the CPUs...
    reserved = {}

    class RecordingRay:
        """Stands for Ray: records what the task is declared with."""

        @staticmethod
        def remote(**declared):
            return lambda function: SimpleNamespace(options=lambda **kw: reserved.update(kw))

    monkeypatch.setattr(ray_tasks, "ray", RecordingRay)
    ray_tasks.as_trial_task(ray_executor.train_trial, RayOptions(cpus_per_trial=cpus))
    assert reserved["num_cpus"] == cpus
    # ...and trains with that many torch threads.
    during_training = []
    monkeypatch.setattr(ray_executor, "use_worker_environment", lambda env: None)
    monkeypatch.setattr(ray_executor, "load_arrays", lambda config: None)
    monkeypatch.setattr(
        ray_executor, "run_trial", lambda *args: during_training.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    trial = Trial(1, TrainConfig(), "[1/1]")
    try:
        ray_executor.train_trial(trial, "s", None, {}, RayOptions(cpus_per_trial=cpus))
    finally:
        torch.set_num_threads(before)
    assert during_training == [threads]
