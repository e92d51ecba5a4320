"""`executor=ray`: a sweep's missing trials as Ray tasks, on one machine or a cluster (issue 8).

Every Ray call of the project is here; `sweep` imports this module only for `executor=ray`, so
the package works without Ray. The sweep itself (reuse, parent run, summary) stays in
`sweep`; a task only trains one trial with `trials.run_trial`, as the local executor does, and
receives what it needs as plain values: the configuration and the parent run's ids.

A worker on another machine has neither this process's environment nor its files: each task
gets the sweep's tracking URI and credentials as arguments, and loads its data itself from
`data_dir`, which must name the same data on every worker (and `checkpoint_dir` a folder the
worker may write; shared storage lets another worker continue an interrupted trial).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlparse

import ray
import ray.exceptions

from cifar_mlflow import console
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import load_arrays
from cifar_mlflow.errors import ExecutorError, UserError
from cifar_mlflow.reachability import redact_uri
from cifar_mlflow.sweeps.ray_options import RayOptions
from cifar_mlflow.sweeps.ray_tasks import as_trial_task, prepare_worker
from cifar_mlflow.sweeps.trials import Trial, TrialOutcome, run_trial
from cifar_mlflow.tracking.client import use_worker_environment
from cifar_mlflow.tracking.sweep_runs import SweepParent, end_running_trials

T = TypeVar("T")
# "" lets `ray.init()` join a Ray instance running on this machine or start one; "local"
# always starts one.
LOCAL_ADDRESSES = ("", "local")
# After Ctrl-C, the cancelled trials get this long to end their runs KILLED before Ray stops.
CANCEL_GRACE_S = 10.0
CANCEL_RETRY_S = 2.0  # between repeated cancellations of a trial that goes on running


class RayExecutorError(ExecutorError):
    """Ray options or a tracking store that a Ray sweep cannot use; the message is one line."""


def on_this_machine(host: str) -> bool:
    """Whether `host` (a name or an IP address) can only mean this very machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_local_address(address: str) -> bool:
    """Whether every Ray worker at `address` runs on this machine.

    `auto` joins whatever cluster this machine belongs to, which can span machines: it counts
    as remote, like any `host:port` or `ray://host:port` of another machine.
    """
    if address in LOCAL_ADDRESSES:
        return True
    if address == "auto":
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return on_this_machine(host)


def is_local_store(uri: str) -> bool:
    """Whether the tracking store at `uri` can only be reached from this machine.

    A file (SQLite, `file:`, a plain path) lives on this machine's disk, and a server or a
    database at a loopback address is a different one, or none, for a worker elsewhere.
    """
    parsed = urlparse(uri)
    if uri.split(":")[0] in ("databricks", "databricks-uc"):  # MLflow's names for a workspace
        return False
    if parsed.scheme in ("", "file", "sqlite") or len(parsed.scheme) == 1:  # "C:\..." too
        return True
    return on_this_machine(parsed.hostname or "")


def check_options(options: RayOptions, tracking_uri: str, address: str) -> None:
    """Refuse what would only fail on the workers, before any run or Ray instance exists."""
    for name in ("cpus_per_trial", "gpus_per_trial"):
        amount = getattr(options, name)
        # Ray's rule: a fraction of one CPU or GPU can be shared, more than one must be whole.
        if amount > 1 and not float(amount).is_integer():
            raise RayExecutorError(
                f"{name} must be a fraction <= 1 or a whole number, got {amount:g}"
            )
    if not is_local_address(address) and is_local_store(tracking_uri):
        raise RayExecutorError(
            f"tracking URI {redact_uri(tracking_uri)} is only reachable from this machine, not "
            f"from Ray workers at {address}; set MLFLOW_TRACKING_URI to a tracking server they "
            "can reach, or use ray_address=local"
        )


@contextlib.contextmanager
def connected(options: RayOptions, tracking_env: Mapping[str, str]) -> Iterator[RayExecutor]:
    """A `RayExecutor` on the cluster `options.address` names; stops Ray only if it started it.

    The address defaults to `RAY_ADDRESS` (set by `ray job submit`), else this machine. A
    process already connected (a notebook, the tests) keeps its connection.
    """
    address = options.address or os.environ.get("RAY_ADDRESS", "")
    check_options(options, tracking_env["MLFLOW_TRACKING_URI"], address)
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                address=address or None,
                include_dashboard=False,
                # Ray's own INFO lines would drown the sweep's; the trials' progress lines
                # come back from the workers with their task's name in front.
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        except ConnectionError as error:
            raise RayExecutorError(f"cannot join the Ray cluster at {address}: {error}") from None
    try:
        # The workers log as quietly as this console: their MLflow was configured by theirs.
        yield RayExecutor(options, {**tracking_env, **console.worker_settings()})
    finally:
        if started:
            ray.shutdown()


class RayExecutor:
    """The missing trials as Ray tasks, as many at a time as the cluster's resources allow.

    A trial is taken from `trials` when a task slot is free, so a search asks for its next
    trial once an earlier one has ended and informed the sampler.
    """

    def __init__(self, options: RayOptions, tracking_env: Mapping[str, str]) -> None:
        self.options = options
        self.tracking_env = dict(tracking_env)

    def host(self, kind: type[T], *args: Any) -> T:
        """`kind(*args)` in a Ray actor, behind a proxy that the trials' tasks call too."""
        return ActorProxy(ray.remote(num_cpus=0)(kind).remote(*args))  # type: ignore[return-value]

    def slots(self) -> int:
        """Trials the cluster can run at once: its CPUs (and GPUs) over a trial's share."""
        resources = ray.cluster_resources()
        shares = [resources.get("CPU", 1.0) / self.options.cpus_per_trial]
        if self.options.gpus_per_trial > 0:
            shares.append(resources.get("GPU", 0.0) / self.options.gpus_per_trial)
        return max(1, int(min(shares)))

    def run(
        self, trials: Iterable[Trial], parent: SweepParent, study_name: str
    ) -> Iterator[tuple[Trial, TrialOutcome]]:
        task = as_trial_task(train_trial, self.options)
        pending: dict[ray.ObjectRef, Trial] = {}
        queue, slots = iter(trials), self.slots()

        def submit_next() -> None:
            trial = next(queue, None)
            if trial is not None:
                pending[task.remote(trial, study_name, parent, self.tracking_env, self.options)] = (
                    trial
                )

        try:
            for _ in range(slots):
                submit_next()
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                trial = pending.pop(done)
                yield trial, outcome_of(done, trial.config)
                submit_next()
        finally:
            # Ctrl-C or an error in the sweep: the running trials end KILLED, keeping their
            # checkpoints for the next sweep, and the queued ones never start.
            if cancel(list(pending)):
                end_running_trials(parent, "KILLED")


def cancel(refs: list[ray.ObjectRef]) -> bool:
    """Cancel the trials' tasks; whether some had to be stopped with their worker.

    Ray delivers a cancellation as a KeyboardInterrupt raised in the task, which a task can
    miss, so it is repeated until the tasks end (each then ends its run KILLED). Tasks still
    running after the grace period are stopped with their worker, and cannot end their runs.
    """
    deadline = time.monotonic() + CANCEL_GRACE_S
    while refs and time.monotonic() < deadline:
        for ref in refs:
            ray.cancel(ref)
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_RETRY_S)
    for ref in refs:
        ray.cancel(ref, force=True)
    return bool(refs)


class ActorProxy:
    """Calls an actor's methods and waits for their results, as if it were the object itself.

    It pickles (the actor's handle does), so a trial's task gets the same actor as the sweep.
    """

    def __init__(self, actor: ray.actor.ActorHandle) -> None:
        self.actor = actor

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):  # pickle's probes, and `actor` before unpickling set it
            raise AttributeError(name)
        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))


def outcome_of(ref: ray.ObjectRef, config: TrainConfig) -> TrialOutcome:
    """The task's outcome; a task that raised, or was lost with its node, is a failed trial.

    In a cluster one lost node must not end the whole sweep. The trial's run, if it had one,
    stays RUNNING: the next sweep continues it from its checkpoint.
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        return TrialOutcome.failed(config, None, error)


def train_trial(
    trial: Trial,
    study_name: str,
    parent: SweepParent,
    tracking_env: Mapping[str, str],
    options: RayOptions,
) -> TrialOutcome:
    """One trial on a Ray worker, logged where and as whom the sweep logs."""
    prepare_worker(options)
    use_worker_environment(tracking_env)
    console.apply_logging_level()
    try:
        arrays = load_arrays(trial.config)
    except UserError as error:
        return TrialOutcome.failed(trial.config, None, error)
    return run_trial(trial, arrays, study_name, parent)
