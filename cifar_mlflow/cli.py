"""`python -m cifar_mlflow`: a thin click shell over the package."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.console import Group, hint_when_interrupted
from cifar_mlflow.errors import OptionError, UserError
from cifar_mlflow.registry_options import registry_options
from cifar_mlflow.server.cli import server
from cifar_mlflow.training_options import TrainingCommand, overrides_from


def experiment_option(command: Callable) -> Callable:
    return click.option(
        "--experiment",
        envvar="MLFLOW_EXPERIMENT_NAME",
        default=schema.DEFAULT_EXPERIMENT,
        show_default=True,
        help="Experiment (env MLFLOW_EXPERIMENT_NAME). Ignored under `mlflow run`.",
    )(command)


def fails_launcher_run(command: Callable) -> Callable:
    """Under `mlflow run` the run exists before a user error: it ends FAILED with the reason.

    The error itself goes on to `console`, which prints it in one line (exit status 2).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            from cifar_mlflow.tracking.client import run_id_from_mlflow_run
            from cifar_mlflow.tracking.runs import record_failure

            run_id = run_id_from_mlflow_run()
            if run_id:
                record_failure(run_id, str(error))
            raise

    return wrapper


@click.group(cls=Group)
def cli() -> None:
    """Train and compare CIFAR-10 models, tracked in MLflow."""


@cli.command(cls=TrainingCommand)
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
@fails_launcher_run
@hint_when_interrupted("the run is marked KILLED; continue it with --resume RUN_ID.")
def train(experiment: str, study: str, resume: str | None, **options: Any) -> None:
    """Train one model and track it as an MLflow run."""
    from cifar_mlflow.data import load_arrays
    from cifar_mlflow.environment import check_machine
    from cifar_mlflow.progress import ProgressCallback
    from cifar_mlflow.tracking.client import check_tracking_server, run_id_from_mlflow_run, run_link
    from cifar_mlflow.tracking.runs import point_launcher_to
    from cifar_mlflow.training import resumable_run, train_tracked

    overrides = overrides_from(options)
    if resume:
        # `mlflow run` passes every declared option; only a changed one is a mistake.
        if TrainConfig.from_overrides(overrides) != TrainConfig():
            raise OptionError("--resume continues a run with its own options; give no other option")
        check_tracking_server()
        run, config, state = resumable_run(resume)
        check_machine(config)
        study = run.data.tags.get(schema.TAG_STUDY, study)
        point_launcher_to(resume)
    else:
        config, state = TrainConfig.from_overrides(overrides), None
        check_machine(config)
        warn_ignored(config)
        check_tracking_server()
    arrays = load_arrays(config)
    run, _ = train_tracked(
        config,
        arrays,
        study=study,
        run_id=resume or run_id_from_mlflow_run(),  # `mlflow run -P resume=ID` too
        experiment=experiment,
        callbacks=[ProgressCallback(config.run_name())],
        resume=state,
    )
    click.echo(f"Finished {run.info.run_name}: {run_link(run.info.experiment_id, run.info.run_id)}")


@cli.command(cls=TrainingCommand)
@click.option(
    "--study",
    required=True,
    help=f"Built-in study ({', '.join(schema.builtin_studies())}) or a .yaml file.",
)
@click.option(
    "--seeds", default=None, metavar="N", help="Seeds per setting [default: the study's]."
)
@click.option(
    "--trials",
    default=None,
    metavar="N",
    help="Trials of a searched study, earlier sweeps' included [default: the study's].",
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
@registry_options
@experiment_option
@fails_launcher_run
@hint_when_interrupted("the sweep is marked KILLED; run the same command again to continue it.")
def sweep(
    study: str,
    seeds: str | None,
    trials: str | None,
    executor: str,
    ray_address: str,
    cpus_per_trial: float,
    gpus_per_trial: float,
    register: bool,
    no_register: bool,
    min_delta: float,
    experiment: str,
    **options: Any,
) -> None:
    """Run a study: a parent run with one nested run per trial; finished trials are reused."""
    from cifar_mlflow.studies import load_study
    from cifar_mlflow.sweeps.ray_options import RayOptions
    from cifar_mlflow.sweeps.sweep import run_sweep
    from cifar_mlflow.sweeps.trials import TrialStatus
    from cifar_mlflow.tracking.client import check_tracking_server

    loaded = load_study(study)
    check_tracking_server()
    result = run_sweep(  # failed trials: SweepFailed, which the console reports (status 1)
        loaded,
        overrides_from(options),
        seeds=parse_count("seeds", seeds),
        trials=parse_count("trials", trials),
        executor=executor,
        ray_options=RayOptions(ray_address, cpus_per_trial, gpus_per_trial),
        experiment=experiment,
        register=register and not no_register,
        min_delta=min_delta,
    )
    shown = (TrialStatus.FINISHED, TrialStatus.REUSED)
    if loaded.search is not None:
        shown = (TrialStatus.FINISHED, TrialStatus.STOPPED, TrialStatus.REUSED)
    counts = ", ".join(
        f"{sum(o.status is status for o in result.outcomes)} {status.value}" for status in shown
    )
    click.echo(f"Sweep {loaded.name}: {counts}. {result.link}")


def parse_count(name: str, text: str | None) -> int | None:
    """`--seeds`/`--trials`: an integer >= 1, or None for the study's own number."""
    if not text:  # `mlflow run` passes "" for "the study's own number"
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise OptionError(f"{name} must be an integer >= 1, got {text!r}")
    return count


@cli.command()
@click.option("--dataset", default=None, metavar="VALUE", help="cifar10 or synthetic.")
@click.option("--data-dir", "--data_dir", "data_dir", default=None, metavar="VALUE")
def data(**options: Any) -> None:
    """Fetch (cifar10) or generate (synthetic) the data set once, and describe it."""
    from cifar_mlflow.data import load_arrays

    arrays = load_arrays(TrainConfig.from_overrides(overrides_from(options)))
    click.echo(
        f"{arrays.name}: {len(arrays.train_labels)} training and {len(arrays.test_labels)} "
        f"test images in {arrays.source} (digest {arrays.digest()})"
    )


@cli.command(name="register")
@click.option("--run-id", required=True, metavar="RUN_ID", help="The run whose model to register.")
@click.option(
    "--name",
    default=None,
    metavar="NAME",
    help="Registered model [default: cifar10-<the run's study>, else cifar10-<its model>].",
)
def register_command(run_id: str, name: str | None) -> None:
    """Register one run's model as a new version (aliases are left alone)."""
    from cifar_mlflow.registry import register_run
    from cifar_mlflow.tracking.client import check_tracking_server

    check_tracking_server()
    click.echo(register_run(run_id, name).describe().capitalize())


@cli.command()
@click.option(
    "--model",
    "model_uri",
    required=True,
    metavar="URI",
    help="models:/cifar10-lr@champion, models:/m-<id>, runs:/<run id>/model or a folder.",
)
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="FILE_OR_DIR..."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "csv", "json"]),
    default="text",
    show_default=True,
    help="text: tab-separated; csv with a header; json: one object per line.",
)
@click.option(
    "--top-k",
    "--top_k",
    "top_k",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="Classes per image, most probable first.",
)
def predict(model_uri: str, paths: tuple[Path, ...], output_format: str, top_k: int) -> None:
    """Classify images: one line per image with its file, class and confidence.

    Any image PIL opens is converted to RGB, its central square cropped and resized to 32×32
    (bicubic); a folder means each image file in it (by extension, not its subfolders).
    """
    from cifar_mlflow import prediction
    from cifar_mlflow.tracking.model_loading import load_classifier

    files = prediction.image_files(paths)
    model = load_classifier(model_uri)
    if output_format == "csv":
        click.echo(prediction.csv_header(top_k))
    for result in prediction.predict_files(model, files, top_k):
        click.echo(prediction.format_line(result, output_format))


cli.add_command(server)


def warn_ignored(config: TrainConfig) -> None:
    for name in config.ignored_overrides():
        click.echo(
            f"Note: {name}={config.to_params()[name]} has no effect with model={config.model}, "
            f"optimizer={config.optimizer} (recorded in the run's "
            f"`{schema.TAG_UNUSED_PARAMS}` tag)",
            err=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: user errors are one line with exit status 2 (`console`)."""
    cli.main(args=argv, prog_name="python -m cifar_mlflow")
