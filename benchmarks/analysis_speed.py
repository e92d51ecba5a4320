"""How fast the analysis rebuilds Table 1 and the three study figures from a tracking server.

Fills a server with a realistic experiment (by default 200 runs x 30 epochs, in the shape of the
tracking schema: sweeps as parent runs with nested trials, an earlier round of sweeps whose
trials the latest round reuses, a failed trial, and one-off runs outside any study), then times
in this process what `python -m analysis.table1` and `python -m analysis.figures --study S` for
S = activation, lr, patch do: query, draw, write PNG and PDF, log them to the parent run.
Python start-up and imports are reported apart. Target: under 10 s in total.

Unless --tracking-uri is given, a local `mlflow server` (SQLite backend in a temporary folder,
loopback port, no auth) is started for the run and stopped afterwards.

    .venv/bin/python benchmarks/analysis_speed.py [--runs 200] [--epochs 30] [--tracking-uri URI]
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout
from dataclasses import replace
from pathlib import Path

import click

# Run as a script from anywhere: `tests.fake_runs` and `analysis` live at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plain_server import plain_server

_import_started = time.perf_counter()
from mlflow import MlflowClient  # noqa: E402

from analysis import tables  # noqa: E402
from analysis.figures import write_study_figures  # noqa: E402
from analysis.query import Tracking  # noqa: E402
from analysis.table1 import load_table1  # noqa: E402
from cifar_mlflow import schema  # noqa: E402
from tests import fake_runs  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _import_started
FIGURE_STUDIES = ("activation", "lr", "patch")


def fill(client: MlflowClient, experiment: str, runs: int, epochs: int, seeds: int) -> int:
    """Log about `runs` runs (at least two rounds of every study); the number logged."""
    experiment_id = fake_runs.create_experiment(client, experiment)
    clock = fake_runs.Clock()
    logged = 0
    for study in schema.REPORT_STUDIES:
        # An earlier one-seed round with a crashed trial (the sweep ended FAILED), then the
        # latest round over all seeds, which reuses what finished, as re-running a sweep does.
        first = fake_runs.log_sweep(
            client, experiment_id, study, clock, epochs=epochs, failed_trials=1
        )
        latest = fake_runs.log_sweep(
            client, experiment_id, study, clock, seeds, epochs, first.trials
        )
        for sweep in (first, latest):
            logged += 1 + len(sweep.trials) - len(sweep.reused) + len(sweep.failed)
    # One-off runs outside any study make up the rest, as in any team's experiment.
    configs = [
        config for study in schema.REPORT_STUDIES for config in fake_runs.study_configs(study)
    ]
    for index in range(max(0, runs - logged)):
        config = replace(configs[index % len(configs)], seed=1000 + index, epochs=epochs)
        fake_runs.log_trial(client, experiment_id, config, schema.NO_STUDY, clock)
    return max(runs, logged)


def measure(tracking: Tracking, experiment: str, output_dir: Path) -> dict[str, float]:
    """Seconds taken by Table 1 and by each study's figures, as the commands make them."""
    seconds = {}
    started = time.perf_counter()
    tables.render(load_table1(experiment, tracking=tracking), tables.TABLE1_COLUMNS, "markdown")
    seconds["table1"] = time.perf_counter() - started
    for study in FIGURE_STUDIES:
        started = time.perf_counter()
        write_study_figures(study, output_dir, experiment, tracking=tracking)
        seconds[f"figures --study {study}"] = time.perf_counter() - started
    return seconds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runs", default=200, show_default=True, help="Runs to log, sweeps included.")
@click.option("--epochs", default=30, show_default=True, help="Epochs per run.")
@click.option("--seeds", default=3, show_default=True, help="Seeds per setting (latest sweeps).")
@click.option("--tracking-uri", help="Use this server instead of starting a local one.")
@click.option("--workers", default=4, show_default=True, help="Workers of the local server.")
@click.option("--target", default=10.0, show_default=True, help="Seconds; exit 1 above it.")
def main(
    runs: int, epochs: int, seeds: int, tracking_uri: str | None, workers: int, target: float
) -> None:
    """Fill a tracking server, then time Table 1 and the activation, lr and patch figures."""
    with tempfile.TemporaryDirectory(prefix="analysis-speed-") as tmp:
        folder = Path(tmp)
        server = (
            plain_server(folder, workers)
            if tracking_uri is None
            else nullcontext((tracking_uri, None))
        )
        with server as (uri, _):
            experiment = f"analysis-speed-{int(time.time())}"
            started = time.perf_counter()
            # MLflow prints a "View run" link for every run it ends on a server.
            with redirect_stdout(io.StringIO()):
                logged = fill(MlflowClient(uri), experiment, runs, epochs, seeds)
            filled = time.perf_counter() - started
            click.echo(f"server: {uri}; filled {logged} runs x {epochs} epochs in {filled:.1f} s")
            seconds = measure(Tracking(uri), experiment, folder / "outputs")
    for name, value in seconds.items():
        click.echo(f"{name:<28}{value:6.2f} s")
    total = sum(seconds.values())
    verdict = "OK" if total < target else "TOO SLOW"
    click.echo(f"{'total':<28}{total:6.2f} s  (target < {target:g} s: {verdict})")
    click.echo(f"{'(imports, not in total)':<28}{IMPORT_SECONDS:6.2f} s")
    if total >= target:
        sys.exit(1)


if __name__ == "__main__":
    main()
