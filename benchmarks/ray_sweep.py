"""Wall time of one 4-trial synthetic sweep: the local executor against Ray (issue 8).

    .venv/bin/python benchmarks/ray_sweep.py [--cpus 2] [--study FILE] [--set NAME=VALUE ...]

The sweep is the one tests/test_ray_sweep.py runs small: `ray_sweep_study.yaml`, four trials of
equal cost (a narrow MLP-Mixer, D 64, 2 blocks, batch 32, at four learning rates), here on the
synthetic set (4,500 training images) for 12 epochs, so that training dominates the fixed
costs. Both sweeps run from this process against a local team server (PostgreSQL + `mlflow
server`, started with `cifar_mlflow.server`), each in a fresh experiment so that no trial is
reused, and both get the same `--cpus`: the local executor trains one trial after another with
`--cpus` torch threads; Ray starts a local instance of `--cpus` CPUs and runs one trial per
CPU, each with one torch thread. Ray's wall time includes starting and stopping that instance
and its worker processes (which import torch and MLflow, and load the data themselves). The
load average is printed: another job on the machine makes both times swing, and two torch
threads suffer more from a busy core than one.

Measured 2026-11-27 on the development machine (2-core AMD EPYC, KVM), defaults, 3 min 6 s:

    sweep: study ray_sweep_study, 4 trials, epochs=12, synthetic data
    2 CPUs, PostgreSQL-backed local server; wall time, mean time per trial run
    local: 1 trial at a time, 2 torch threads      98.7 s    24.1 s
    ray: 2 at a time, 1 thread each, with
      Ray start-up and shutdown                     68.0 s    29.3 s
    ratio ray / local                               0.69
    load average (1 min) before / after          1.4 / 1.8

On two cores both executors have the same CPU time to spend: Ray gains what one trial cannot
use of the second core, and loses its start-up (about 9 s here: `ray.init`, two worker
processes importing torch and MLflow, `ray.shutdown`). A trial of this small Mixer at batch 32
trains only 1.1-1.2x faster on two threads than on one, so two trials side by side win. At
batch 128 a trial gains 1.45x from the second thread and the same sweep measured 0.91 (5
epochs); the `patch` study (D 64, 2 blocks, 3 epochs) measured 1.11, because its patch-2 trial
trains about four times longer than the others and bounds the Ray sweep. More CPUs, machines
or GPUs (`gpus_per_trial` below 1 to share one) are where Ray pays without such conditions.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import click
import ray
import torch
from mlflow import MlflowClient

from cifar_mlflow.server import free_port, start, stop
from cifar_mlflow.studies import Study, load_study
from cifar_mlflow.sweeps.local import data_sets
from cifar_mlflow.sweeps.sweep import run_sweep

STUDY_FILE = Path(__file__).resolve().with_name("ray_sweep_study.yaml")
DEFAULT_OPTIONS = ("epochs=12",)


def timed_sweep(
    study: Study, overrides: dict[str, str], executor: str, cpus: int
) -> tuple[float, float]:
    """Wall seconds of the sweep, Ray's start and stop included, and its trials' mean run time.

    Each sweep has an experiment of its own, so nothing is reused.
    """
    begin = time.perf_counter()
    if executor == "ray":
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    try:
        result = run_sweep(
            study,
            overrides,
            executor=executor,
            experiment=f"bench-ray-sweep-{executor}-{uuid.uuid4().hex[:8]}",
            echo=lambda line: click.echo(line, err=True),
        )
    finally:
        if executor == "ray":
            ray.shutdown()
    seconds = time.perf_counter() - begin
    if any(outcome.status != "finished" for outcome in result.outcomes):
        raise click.ClickException(f"{executor}: not every trial finished")
    runs = [MlflowClient().get_run(outcome.run_id).info for outcome in result.outcomes]
    trial_s = sum(run.end_time - run.start_time for run in runs) / len(runs) / 1000
    return seconds, trial_s


@click.command()
@click.option("--cpus", default=2, show_default=True, help="CPUs for either executor.")
@click.option(
    "--study", default=str(STUDY_FILE), help="Built-in study or .yaml file [default: the above]."
)
@click.option(
    "--set",
    "options",
    multiple=True,
    default=DEFAULT_OPTIONS,
    show_default=True,
    metavar="NAME=VALUE",
    help="Training option of every trial (repeatable; replaces the defaults).",
)
def main(cpus: int, study: str, options: tuple[str, ...]) -> None:
    """Time the same sweep with the local executor, then with Ray; print both and the ratio."""
    loaded = load_study(study)
    folder = Path(tempfile.mkdtemp(prefix="cifar-mlflow-ray-bench-"))
    # A folder of its own, which `start` can hand to the postgres user when run as root.
    server_dir = Path(tempfile.mkdtemp(prefix="cifar-mlflow-ray-bench-server-"))
    try:
        server = start(server_dir, port=free_port())
        try:
            os.environ.update(server.env)
            overrides = {
                "dataset": "synthetic",
                "data_dir": str(folder / "data"),
                "checkpoint_dir": str(folder / "checkpoints"),
                "device": "cpu",
                **dict(option.split("=", 1) for option in options),
            }
            configs = loaded.trial_configs(overrides)
            # The data set is written once, outside both timings.
            data_sets(configs)
            torch.set_num_threads(cpus)
            load_before = os.getloadavg()[0]
            local, local_trial = timed_sweep(loaded, overrides, "local", cpus)
            on_ray, ray_trial = timed_sweep(loaded, overrides, "ray", cpus)
            load_after = os.getloadavg()[0]
        finally:
            stop(server_dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(server_dir, ignore_errors=True)
    print(f"sweep: study {loaded.name}, {len(configs)} trials, {' '.join(options)}, synthetic data")
    print(f"{cpus} CPUs, PostgreSQL-backed local server; wall time, mean time per trial run")
    print(f"local: 1 trial at a time, {cpus} torch threads   {local:7.1f} s  {local_trial:6.1f} s")
    print(f"ray: {cpus} at a time, 1 thread each, with")
    print(f"  Ray start-up and shutdown                  {on_ray:7.1f} s  {ray_trial:6.1f} s")
    print(f"ratio ray / local                            {on_ray / local:7.2f}")
    print(f"load average (1 min) before / after          {load_before:.1f} / {load_after:.1f}")


if __name__ == "__main__":
    main()
