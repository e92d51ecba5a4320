"""`python -m cifar_mlflow`: a thin click shell over the package."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

import click

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.errors import TrainingError, UserError
from cifar_mlflow.server import server

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def training_options(command: Callable) -> Callable:
    """One option per `TrainConfig` field, `--data-dir` style, `--data_dir` accepted too.

    `mlflow run` passes undeclared `-P` names spelled as given (`--patch_size`), hence both.
    Values stay text until `TrainConfig.from_overrides` parses and validates them in one place.
    """
    for field in reversed(fields(TrainConfig)):
        names = [f"--{field.name.replace('_', '-')}"]
        if "_" in field.name:
            names.append(f"--{field.name}")
        default = field.default if field.default is not MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        command = click.option(
            *names,
            field.name,
            default=None,
            metavar="VALUE",
            help=f"{field.metadata['help']} [default: {shown}]",
        )(command)
    return command


def overrides_from(options: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in options.items() if value is not None}


def experiment_option(command: Callable) -> Callable:
    return click.option(
        "--experiment",
        envvar="MLFLOW_EXPERIMENT_NAME",
        default=schema.DEFAULT_EXPERIMENT,
        show_default=True,
        help="Experiment (env MLFLOW_EXPERIMENT_NAME). Ignored under `mlflow run`.",
    )(command)


def report_user_errors(command: Callable) -> Callable:
    """Turn a `UserError` into one line on stderr and exit status 2.

    Under `mlflow run` the run already exists; it is ended FAILED with the reason on it.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            from cifar_mlflow import tracking

            run_id = tracking.run_id_from_mlflow_run()
            if run_id:
                tracking.record_failure(run_id, str(error))
            raise click.UsageError(str(error)) from None

    return wrapper


@click.group(context_settings=CONTEXT_SETTINGS)
def cli() -> None:
    """Train and compare CIFAR-10 models, tracked in MLflow."""


@cli.command()
@training_options
@experiment_option
@click.option(
    "--study", default=schema.NO_STUDY, show_default=True, help="Value of the run's `study` tag."
)
@click.option(
    "--resume",
    metavar="RUN_ID",
    default=None,
    help="Continue this run from its last checkpointed epoch (with its own options).",
)
@report_user_errors
def train(experiment: str, study: str, resume: str | None, **options: Any) -> None:
    """Train one model and track it as an MLflow run."""
    from cifar_mlflow import tracking
    from cifar_mlflow.data import load_arrays
    from cifar_mlflow.progress import ProgressCallback

    overrides = overrides_from(options)
    if resume:
        # `mlflow run` passes every declared option; only a changed one is a mistake.
        if TrainConfig.from_overrides(overrides) != TrainConfig():
            raise UserError("--resume continues a run with its own options; give no other option")
        tracking.check_tracking_server()
        run, config, state = tracking.resumable_run(resume)
        study = run.data.tags.get(schema.TAG_STUDY, study)
        tracking.point_launcher_to(resume)
    else:
        config, state = TrainConfig.from_overrides(overrides), None
        warn_ignored(config)
        tracking.check_tracking_server()
    arrays = load_arrays(config)
    run, _ = tracking.train_tracked(
        config,
        arrays,
        study=study,
        run_id=resume or tracking.run_id_from_mlflow_run(),  # `mlflow run -P resume=ID` too
        experiment=experiment,
        callbacks=[ProgressCallback(config.run_name())],
        resume=state,
    )
    click.echo(f"Finished {run.info.run_name}: {tracking.run_link(run)}")


@cli.command()
@click.option(
    "--study",
    required=True,
    help="Built-in study (activation, lr, patch, best_resnet, best_mixer) or a .yaml file.",
)
@click.option(
    "--seeds", default=None, metavar="N", help="Seeds per setting [default: the study's]."
)
@click.option(
    "--executor",
    default="local",
    show_default=True,
    help="Where trials run: local (one after another here) or ray (in parallel on Ray).",
)
@click.option(
    "--ray-address",
    "--ray_address",
    "ray_address",
    default="",
    metavar="ADDRESS",
    help="Ray cluster: host:port, ray://host:port, auto [default: RAY_ADDRESS, else here].",
)
@click.option(
    "--cpus-per-trial",
    "--cpus_per_trial",
    "cpus_per_trial",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="CPUs Ray reserves for each trial (and its torch threads).",
)
@click.option(
    "--gpus-per-trial",
    "--gpus_per_trial",
    "gpus_per_trial",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs Ray reserves for each trial; 0.25 lets four small trials share a GPU.",
)
@training_options
@experiment_option
@report_user_errors
def sweep(
    study: str,
    seeds: str | None,
    executor: str,
    ray_address: str,
    cpus_per_trial: float,
    gpus_per_trial: float,
    experiment: str,
    **options: Any,
) -> None:
    """Run a study: a parent run with one nested run per trial; finished trials are reused."""
    from cifar_mlflow import tracking
    from cifar_mlflow.studies import load_study
    from cifar_mlflow.sweep import RayOptions, SweepFailed, run_sweep

    loaded = load_study(study)
    tracking.check_tracking_server()
    try:
        result = run_sweep(
            loaded,
            overrides_from(options),
            seeds=parse_seeds(seeds),
            executor=executor,
            ray_options=RayOptions(ray_address, cpus_per_trial, gpus_per_trial),
            experiment=experiment,
        )
    except SweepFailed as failure:
        for outcome in failure.result.failures:
            click.echo(f"FAILED {outcome.config.run_name()}: {outcome.error}", err=True)
        click.echo(f"Sweep {loaded.name}: {failure}. {failure.result.link}", err=True)
        sys.exit(1)
    counts = ", ".join(
        f"{sum(o.status == status for o in result.outcomes)} {status}"
        for status in ("finished", "reused")
    )
    click.echo(f"Sweep {loaded.name}: {counts}. {result.link}")


def parse_seeds(seeds: str | None) -> int | None:
    if not seeds:  # `mlflow run` passes "" for "the study's own number"
        return None
    try:
        count = int(seeds)
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"seeds must be an integer >= 1, got {seeds!r}")
    return count


@cli.command()
@click.option("--dataset", default=None, metavar="VALUE", help="cifar10 or synthetic.")
@click.option("--data-dir", "--data_dir", "data_dir", default=None, metavar="VALUE")
@report_user_errors
def data(**options: Any) -> None:
    """Fetch (cifar10) or generate (synthetic) the data set once, and describe it."""
    from cifar_mlflow.data import load_arrays

    arrays = load_arrays(TrainConfig.from_overrides(overrides_from(options)))
    click.echo(
        f"{arrays.name}: {len(arrays.train_labels)} training and {len(arrays.test_labels)} "
        f"test images in {arrays.source} (digest {arrays.digest()})"
    )


cli.add_command(server)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def warn_ignored(config: TrainConfig) -> None:
    for name in config.ignored_overrides():
        click.echo(
            f"Note: {name}={config.to_params()[name]} has no effect with model={config.model}, "
            f"optimizer={config.optimizer} (recorded in the run's `unused_params` tag)",
            err=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: click's usage errors become one line and exit status 2.

    SIGTERM is handled like Ctrl-C: the current step is abandoned, the run ends KILLED and its
    last checkpoint stays for `--resume`.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        status = cli.main(args=argv, prog_name="python -m cifar_mlflow", standalone_mode=False)
    except click.UsageError as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(2)
    except TrainingError as error:
        click.echo(f"Error: {error} (the run is marked FAILED)", err=True)
        sys.exit(1)
    except click.Abort:
        click.echo("Aborted: the run is marked KILLED; continue it with --resume RUN_ID.", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)
