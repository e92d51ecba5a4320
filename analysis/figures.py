"""The figures of a study, rebuilt from its sweep: `python -m analysis.figures --study lr`.

A study with a grid (activation, lr, patch) gives Figures 1-3: one line per setting of the varied
field(s), mean and band over seeds. A study without one (best_resnet, best_mixer) gives
Figures 4/6, the curves of the sweep's best run, and Figures 5/7, that run's own
`figures/weights.png`. The files are written to --output-dir and attached to the sweep's parent
run under `figures/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import pandas as pd
from matplotlib.figure import Figure

from analysis import frames
from analysis.cli import (
    command,
    experiment_option,
    interval_option,
    output_dir_option,
    parent_run_option,
)
from analysis.plots import CURVE_METRICS, PNG_DPI, curves_figure
from analysis.query import AnalysisError, Sweep, Tracking
from cifar_mlflow import schema

FIGURES_ARTIFACT_PATH = "figures"


@dataclass
class StudyFigures:
    sweep: Sweep
    trials: pd.DataFrame  # every trial of the sweep, with its `setting`
    curves: Figure
    best: pd.Series | None  # the best trial, for a study without a grid
    weights_png: bytes | None  # the best trial's weights image, when it logged one


def _title(sweep: Sweep, trials: pd.DataFrame) -> str:
    models = ", ".join(sorted(trials["params.model"].dropna().unique()))
    shown = f"one line per {', '.join(sweep.varied)}" if sweep.varied else "best run"
    return f"Study {sweep.study} ({models}): {shown}"


def study_figures(tracking: Tracking, sweep: Sweep, interval: str = "spread") -> StudyFigures:
    """Query a sweep's trials and histories and draw its figures (nothing is written).

    `interval`: the band around each setting's mean curve (`plots.BANDS`)."""
    trials = tracking.trials(sweep)
    if trials.empty:
        raise AnalysisError(f"sweep {sweep.run_id} of study {sweep.study!r} has no finished trials")
    trials = frames.with_settings(trials, sweep.varied)
    best, weights_png = None, None
    shown = trials
    if not sweep.varied:
        best = frames.best_trial(trials, sweep.best_run_id)
        # The curves of one run, not a mean over seeds: its legend names the run.
        shown = trials[trials["run_id"] == best["run_id"]]
        shown = shown.assign(setting=pd.Categorical(shown["run_name"].astype(str)))
        weights_png = tracking.artifact_bytes(best["run_id"], schema.WEIGHTS_FIGURE_ARTIFACT)
    history = tracking.history(shown["run_id"], CURVE_METRICS)
    figure = curves_figure(frames.curves(history, shown), _title(sweep, trials), interval)
    return StudyFigures(sweep, trials, figure, best, weights_png)


def save_figures(figures: StudyFigures, output_dir: Path) -> list[Path]:
    """Write the curves as PNG and PDF (and the weights image as PNG); the paths written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"{figures.sweep.study}_curves"
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        figures.curves.savefig(path, dpi=PNG_DPI)
    if figures.weights_png is not None:
        weights = output_dir / f"{figures.sweep.study}_weights.png"
        weights.write_bytes(figures.weights_png)
        paths.append(weights)
    return paths


def write_study_figures(
    study: str | None,
    output_dir: Path,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tracking: Tracking | None = None,
    interval: str = "spread",
) -> tuple[StudyFigures, list[Path]]:
    """Build a study's figures, save them and attach them to the sweep's parent run."""
    tracking = tracking or Tracking()
    sweep = tracking.find_sweep(study, experiment, parent_run_id)
    figures = study_figures(tracking, sweep, interval)
    paths = save_figures(figures, output_dir)
    tracking.log_artifacts(sweep.run_id, paths, FIGURES_ARTIFACT_PATH)
    return figures, paths


@command
@click.option("--study", "-s", metavar="NAME", help="Study name (e.g. activation, lr, patch).")
@output_dir_option("PNG and PDF files")
@interval_option
@experiment_option
@parent_run_option
def main(
    study: str | None,
    output_dir: Path,
    interval: str,
    experiment: str | None,
    parent_run_id: str | None,
) -> None:
    """Draw a study's figures from its latest finished sweep (or --parent-run-id).

    The files are also logged as artifacts of the sweep's parent run, under figures/.
    """
    figures, paths = write_study_figures(
        study, output_dir, experiment, parent_run_id, interval=interval
    )
    if figures.best is not None and figures.weights_png is None:
        click.echo(
            f"Warning: best run {figures.best['run_id']} has no "
            f"{schema.WEIGHTS_FIGURE_ARTIFACT} artifact",
            err=True,
        )
    for path in paths:
        click.echo(path)
    click.echo(f"Logged to run {figures.sweep.run_id} under {FIGURES_ARTIFACT_PATH}/", err=True)


if __name__ == "__main__":
    main()
