"""What tracking a run in MLflow costs: a tracked MLP run against the same run untracked.

The run: the MLP, 3 epochs over the 45,000 training images of the synthetic set at CIFAR size
(50,000 train + 10,000 test images written by `write_synthetic_cifar`), seed 42, on the
default device. Tracked = `tracking.train_tracked` against a local `mlflow server` (SQLite
backend and artifacts in a temporary folder, loopback port, system metrics on, as a user's run
has them); untracked = `engine.fit` directly, with the same per-epoch checkpoint
(`train_tracked` checkpoints for --resume: a cost of resumability, not of MLflow; its blocked
time has its own line). Both include moving the data to the device. Tracked and untracked
runs alternate after one small warm-up run of each (imports, first MLflow calls); the overhead
is the median over the pairs of a tracked run and the untracked run before it (each pair's in
brackets, sorted), the other lines are medians.

Besides the wall-time ratio, the cost is broken down where it is paid, which stays readable
when other jobs make wall times swing: the main thread blocked in run set-up, in
`MlflowCallback.on_epoch_end` (per epoch), waiting at the end for the uploads of the final
model's artifacts (config.json, the weights figure, the model: a thread uploads them while the
engine evaluates the test split) and in ending the run; the uploads' own time in their thread;
and the CPU time taken meanwhile by this process's other threads (MLflow's asynchronous
logging and system-metrics monitor, the uploads, the checkpoint writer) and by the server,
which on a small machine compete with training for its cores.
Targets: overhead ≤ 2 % of the wall time, ≤ 10 ms blocked per epoch.

    .venv/bin/python benchmarks/tracking_overhead.py [--epochs 3] [--repeats 6]
        [--system-metrics-interval SECONDS] [--device auto]

Measured 2026-11-27 on the development machine (2-core AMD EPYC, KVM, precision auto = bf16;
the benchmark itself keeps the load average near 2.5), `--repeats 8`, 4 min 46 s:

    wall time, untracked                        14.52 s
    wall time, tracked                          15.10 s
    overhead: tracked / untracked - 1, median   +4.50 %
      each pair, sorted                         -7.1, +3.6, +4.2, +4.5, +4.5, +5.1, +5.4, +8.5 %
    main thread blocked by MLflow               0.13 s (0.87 %)
      run set-up: experiment, run               0.03 s
      per epoch, in on_epoch_end: median / max  0.53 / 4.41 ms
      end of run, waiting for the uploads       0.02 s
      ending the run: flush, end_run, get_run   0.07 s
    end-of-run uploads, beside the test split   0.44 s
    per epoch, checkpoint (both): median / max  2.9 / 4.8 ms
    training pass per epoch, untracked          4.37 s
    training pass per epoch, tracked            4.47 s (+2.3 %)
    CPU during training: other threads          0.505 s of 14.6 s
    CPU during training: tracking server        0.360 s

The same code measured +1.21 % (pairs -2.3 ... +9.9, `--repeats 6`) half an hour earlier:
on this machine an epoch's time swings by ±10 % between runs of the same kind (3.9 to 5.4 s
measured), so the wall-time overhead is known to a few percent only. The steady figures are
the blocked time (0.9 %) and the CPU the tracking takes: training uses both cores, so each
second of CPU the server (0.36 s, of which ~0.03 s per epoch idle) or the uploads take on
them costs training about as much; against a server on another machine that share goes away.

Where the time went before (all measured with this benchmark): the run's description (tags,
params, data set) was written before training, 0.22 s, and is now written by a thread beside
the first epoch; the data set's digest copied the image arrays to hash them (0.35 s, now
0.1 s). The end-of-run logging blocked 0.50 s: it now runs beside the test split, the model's
classes are pickled by value (shipping the package as code uploaded its 20 files, a request
each), and the model is created and linked to the run by this project, so MLflow no longer
copies each metric's history onto it (a request per metric; the final metrics are logged with
the model's id instead). Earlier still: the checkpoint was written in the loop (~100 ms per
epoch; and while its thread started before the metrics were queued, its pickling held the GIL
and `on_epoch_end` took 5 ms instead of 0.5); the weights figure drew an Axes per unit and
the tags and params took three requests (end of run 1.2 s, set-up 0.39 s); `on_epoch_end`
used `mlflow.log_metrics(run_id=...)`, which fetches the run first (18 ms per epoch), and
ending the run took 1.6-2 s until asynchronous-logging buffering (MLflow's logging thread
polls its queue once a second, and flush + end_run each waited for it).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import click
import mlflow
import psutil
from plain_server import plain_server

from cifar_mlflow import data, engine, environment, synthetic
from cifar_mlflow.checkpoint import CheckpointWriter, checkpoint_path
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.engine import Callback
from cifar_mlflow.schema import EpochMetrics
from cifar_mlflow.tracking import callback, runs
from cifar_mlflow.training import train_tracked

TRAIN_IMAGES = 50_000  # 45,000 train + 5,000 valid
TEST_IMAGES = 10_000
WARM_UP_TRAIN_SIZE = 512
EXPERIMENT = "tracking-overhead"


def process_tree_cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def background_threads_cpu_s() -> dict[int, float]:
    """CPU seconds of each Python thread of this process but the main one (MLflow's threads)."""
    main = threading.main_thread().native_id
    python_threads = {thread.native_id for thread in threading.enumerate()} - {main}
    return {
        t.id: t.user_time + t.system_time
        for t in psutil.Process().threads()
        if t.id in python_threads
    }


@contextlib.contextmanager
def timing_method(cls: type, name: str, durations: list[float]) -> Iterator[None]:
    """Record how long each call of `cls.name` takes, for the duration of the block."""
    original = getattr(cls, name)

    def timed(self: object, *args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(cls, name, timed)
    try:
        yield
    finally:
        setattr(cls, name, original)


class Clock(Callback):
    """Times training and each epoch's pass, and the CPU that others use meanwhile.

    Passed before the tracker, it sees the start of training once the run is set up, and the
    end of training before the end-of-run logging.
    """

    def __init__(self, server: psutil.Process) -> None:
        self.server = server
        self.epoch_times: list[float] = []

    def on_train_start(self, *args: object) -> None:
        self.train_start = time.perf_counter()
        self.threads_cpu = background_threads_cpu_s()
        self.server_cpu = process_tree_cpu_s(self.server)

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self.epoch_times.append(metrics.epoch_time_s)

    def on_train_end(self, *args: object) -> None:
        self.train_end = time.perf_counter()
        threads_cpu = background_threads_cpu_s()
        self.threads_cpu = sum(
            cpu - self.threads_cpu.get(thread, 0.0) for thread, cpu in threads_cpu.items()
        )
        self.server_cpu = process_tree_cpu_s(self.server) - self.server_cpu


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    setup_s: float  # from the call to the start of training
    epoch_s: list[float]  # training passes
    training_s: float  # from the start of training to its end (epochs, test split)
    threads_cpu_s: float  # MLflow's threads in this process, during training
    server_cpu_s: float  # the tracking server, during training
    blocked_epoch_s: tuple[float, ...] = ()  # inside on_epoch_end, one per epoch
    checkpoint_s: tuple[float, ...] = ()  # each epoch's checkpoint, as the loop waits for it
    end_of_run_s: float = 0.0  # inside on_test_start and on_train_end
    uploads_s: float = 0.0  # the end-of-run uploads, in their thread
    after_training_s: float = 0.0  # from the end of training to the return


def measurement(clock: Clock, start: float, wall: float, **tracked: object) -> Measurement:
    return Measurement(
        wall_s=wall,
        setup_s=clock.train_start - start,
        epoch_s=clock.epoch_times,
        training_s=clock.train_end - clock.train_start,
        threads_cpu_s=clock.threads_cpu,
        server_cpu_s=clock.server_cpu,
        after_training_s=start + wall - clock.train_end,
        **tracked,
    )


def untracked(config: TrainConfig, arrays: data.CifarArrays, server: psutil.Process) -> Measurement:
    clock = Clock(server)
    start = time.perf_counter()
    env = environment.environment_for(config)
    device_data = data.to_device(arrays, config, env.device, env.memory_format)
    # Checkpointed as `train_tracked` does, so that the difference is what MLflow costs.
    checkpoint = checkpoint_path(config.checkpoint_dir, "untracked")
    engine.fit(config, device_data, env, [clock], checkpoint=checkpoint)
    return measurement(clock, start, time.perf_counter() - start)


def tracked(config: TrainConfig, arrays: data.CifarArrays, server: psutil.Process) -> Measurement:
    clock = Clock(server)
    blocked: list[float] = []
    checkpoints: list[float] = []
    end_of_run: list[float] = []
    uploads: list[float] = []
    # MLflow prints a "View run" link for every run it ends on a server.
    with (
        timing_method(callback.MlflowCallback, "on_epoch_end", blocked),
        timing_method(CheckpointWriter, "hold", checkpoints),
        timing_method(callback.MlflowCallback, "on_test_start", end_of_run),
        timing_method(callback.MlflowCallback, "on_train_end", end_of_run),
        timing_method(callback.MlflowCallback, "_log_artifacts", uploads),
        redirect_stdout(io.StringIO()),
    ):
        start = time.perf_counter()
        train_tracked(config, arrays, experiment=EXPERIMENT, callbacks=[clock])
        wall = time.perf_counter() - start
    return measurement(
        clock,
        start,
        wall,
        blocked_epoch_s=tuple(blocked),
        checkpoint_s=tuple(checkpoints),
        end_of_run_s=sum(end_of_run),
        uploads_s=sum(uploads),
    )


def report(plain: list[Measurement], logged: list[Measurement]) -> list[str]:
    def median(runs: list[Measurement], value: Callable[[Measurement], float]) -> float:
        return statistics.median(value(m) for m in runs)

    wall = median(plain, lambda m: m.wall_s)
    # Each tracked run against the untracked run just before it: slow drifts of the machine
    # cancel out.
    overheads = sorted(100 * (t.wall_s / p.wall_s - 1) for p, t in zip(plain, logged, strict=True))
    end_of_run = median(logged, lambda m: m.end_of_run_s)
    setup = median(logged, lambda m: m.setup_s) - median(plain, lambda m: m.setup_s)
    blocked = [b for m in logged for b in m.blocked_epoch_s]
    checkpoints = [c for m in logged for c in m.checkpoint_s]
    # After training: waiting for the end-of-run uploads, then flushing, ending, fetching.
    after_training = median(logged, lambda m: m.after_training_s) - median(
        plain, lambda m: m.after_training_s
    )
    ending = after_training - end_of_run
    on_main_thread = setup + sum(blocked) / len(logged) + end_of_run + ending

    epoch = median(plain, lambda m: statistics.median(m.epoch_s))
    epoch_tracked = median(logged, lambda m: statistics.median(m.epoch_s))
    training = median(logged, lambda m: m.training_s)
    rows = [
        ("wall time, untracked", f"{wall:.2f} s"),
        ("wall time, tracked", f"{median(logged, lambda m: m.wall_s):.2f} s"),
        ("overhead: tracked / untracked - 1, median", f"{statistics.median(overheads):+.2f} %"),
        ("  each pair, sorted", ", ".join(f"{o:+.1f}" for o in overheads) + " %"),
        (
            "main thread blocked by MLflow",
            f"{on_main_thread:.2f} s ({100 * on_main_thread / wall:.2f} %)",
        ),
        ("  run set-up: experiment, run", f"{setup:.2f} s"),
        (
            "  per epoch, in on_epoch_end: median / max",
            f"{1000 * statistics.median(blocked):.2f} / {1000 * max(blocked):.2f} ms",
        ),
        ("  end of run, waiting for the uploads", f"{end_of_run:.2f} s"),
        ("  ending the run: flush, end_run, get_run", f"{ending:.2f} s"),
        (
            "end-of-run uploads, beside the test split",
            f"{median(logged, lambda m: m.uploads_s):.2f} s",
        ),
        (
            "per epoch, checkpoint (both): median / max",
            f"{1000 * statistics.median(checkpoints):.1f} / {1000 * max(checkpoints):.1f} ms",
        ),
        ("training pass per epoch, untracked", f"{epoch:.2f} s"),
        (
            "training pass per epoch, tracked",
            f"{epoch_tracked:.2f} s ({100 * (epoch_tracked / epoch - 1):+.1f} %)",
        ),
        (
            "CPU during training: other threads",
            f"{median(logged, lambda m: m.threads_cpu_s):.3f} s of {training:.1f} s",
        ),
        (
            "CPU during training: tracking server",
            f"{median(logged, lambda m: m.server_cpu_s):.3f} s",
        ),
    ]
    width = max(len(name) for name, _ in rows) + 2
    return [f"{name:<{width}}{value}" for name, value in rows]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--epochs", default=3, show_default=True, help="Epochs per run.")
@click.option("--repeats", default=6, show_default=True, help="Runs of each kind.")
@click.option(
    "--system-metrics-interval",
    type=float,
    help="Seconds between system-metrics samples [default: the project's, "
    f"{runs.SYSTEM_METRICS_INTERVAL_S:g}].",
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
def main(epochs: int, repeats: int, system_metrics_interval: float | None, device: str) -> None:
    """Time a tracked MLP run against the same run untracked, and where the difference goes."""
    if system_metrics_interval is not None:
        os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = str(system_metrics_interval)
    with tempfile.TemporaryDirectory(prefix="tracking-overhead-") as tmp:
        folder = Path(tmp)
        config = TrainConfig(
            model="mlp",
            dataset="synthetic",
            epochs=epochs,
            device=device,
            checkpoint_dir=str(folder / "checkpoints"),
        )
        warm_up = TrainConfig.from_overrides(
            {"epochs": 1, "train_size": WARM_UP_TRAIN_SIZE}, base=config
        )
        started = time.perf_counter()
        synthetic.write_synthetic_cifar(folder / "data", TRAIN_IMAGES, TEST_IMAGES)
        arrays = data.read_cifar_folder(folder / "data", name="synthetic")
        click.echo(f"synthetic set written and read in {time.perf_counter() - started:.1f} s")
        with plain_server(folder) as (uri, server):
            mlflow.set_tracking_uri(uri)
            untracked(warm_up, arrays, server)
            tracked(warm_up, arrays, server)
            plain, logged = [], []
            for repeat in range(1, repeats + 1):
                plain.append(untracked(config, arrays, server))
                logged.append(tracked(config, arrays, server))
                click.echo(
                    f"repeat {repeat}: untracked {plain[-1].wall_s:.2f} s, "
                    f"tracked {logged[-1].wall_s:.2f} s"
                )
    interval = os.environ.get(
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", runs.SYSTEM_METRICS_INTERVAL_S
    )
    click.echo(
        f"MLP, {epochs} epochs, {len(arrays.train_labels) * 9 // 10:,} train images, "
        f"device {environment.resolve_device(device)}, server {uri} (SQLite), system metrics every "
        f"{interval} s, median of {repeats} runs of each, load average {os.getloadavg()[0]:.1f}"
    )
    for line in report(plain, logged):
        click.echo(line)


if __name__ == "__main__":
    main()
