"""A searched study from its latest sweep: `python -m analysis.search --study lr_search`.

Three figures — the best-so-far objective by trial, each searched option against the
objective (log axis for log ranges), the learning curves with stopped trials marked where they
stopped — and a table of the top trials (Markdown, CSV or LaTeX, as for Table 1). The latest
sweep of a search lists the earlier sweeps' trials as reused, so it shows the whole search.
Figures are written to --output-dir and attached to the sweep's parent run under `figures/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import pandas as pd
from matplotlib.figure import Figure

from analysis import search_frames, tables
from analysis.cli import (
    command,
    experiment_option,
    output_dir_option,
    parent_run_option,
    table_format_option,
)
from analysis.figures import FIGURES_ARTIFACT_PATH
from analysis.plots import PNG_DPI
from analysis.query import AnalysisError, Sweep, Tracking
from analysis.search_plots import best_so_far_figure, learning_curves_figure, params_figure
from cifar_mlflow import schema

TOP_TRIALS = 10


@dataclass
class SearchFigures:
    sweep: Sweep
    search: pd.DataFrame  # `search_frames.search_trials`
    top: pd.DataFrame  # `search_frames.top_trials`
    figures: dict[str, Figure]  # file stem → figure

    def table(self, fmt: str) -> str:
        return tables.render(self.top, top_columns(self.top, self.sweep.varied), fmt)


def top_columns(top: pd.DataFrame, names: Sequence[str]) -> list[tables.Column]:
    return [
        tables.Column("Trial", schema.TAG_TRIAL_NUMBER, "d"),
        *(tables.Column(name, name, search_frames.value_format(top[name])) for name in names),
        tables.Column("Best valid accuracy (%)", "objective", ".2f", 100),
        tables.Column("Test accuracy (%)", schema.METRIC_TEST_ACC, ".2f", 100),
    ]


def search_figures(tracking: Tracking, sweep: Sweep) -> SearchFigures:
    """Query a searched sweep's trials and `valid_acc` histories and draw its figures."""
    trials = tracking.trials(sweep)
    if trials.empty:
        raise AnalysisError(f"sweep {sweep.run_id} of study {sweep.study!r} has no finished trials")
    if f"tags.{schema.TAG_TRIAL_NUMBER}" not in trials:
        raise AnalysisError(f"study {sweep.study!r} is not a searched study (it has a grid)")
    valid_acc = tracking.history(trials["run_id"], [schema.METRIC_VALID_ACC])
    search = search_frames.search_trials(trials, valid_acc, sweep.varied)
    text = tracking.artifact_bytes(sweep.run_id, schema.STUDY_ARTIFACT) or b""
    kinds = search_frames.searched_kinds(text.decode())
    title = f"Search {sweep.study}: {len(search)} trials"
    figures = {
        f"{sweep.study}_best_so_far": best_so_far_figure(search, title),
        f"{sweep.study}_params": params_figure(search, sweep.varied, kinds, title),
        f"{sweep.study}_curves": learning_curves_figure(valid_acc, search, title),
    }
    top = search_frames.top_trials(search, sweep.varied, TOP_TRIALS)
    return SearchFigures(sweep, search, top, figures)


@command
@click.option("--study", "-s", metavar="NAME", help="Searched study (e.g. lr_search).")
@output_dir_option("PNG files")
@table_format_option("Format of the top-trials table (printed on stdout).")
@experiment_option
@parent_run_option
def main(
    study: str | None,
    output_dir: Path,
    fmt: str,
    experiment: str | None,
    parent_run_id: str | None,
) -> None:
    """Figures and top trials of a searched study's latest finished sweep (or --parent-run-id)."""
    tracking = Tracking()
    result = search_figures(tracking, tracking.find_sweep(study, experiment, parent_run_id))
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, figure in result.figures.items():
        paths.append(output_dir / f"{stem}.png")
        figure.savefig(paths[-1], dpi=PNG_DPI)
    tracking.log_artifacts(result.sweep.run_id, paths, FIGURES_ARTIFACT_PATH)
    click.echo(result.table(fmt), nl=False)
    for line in search_frames.stopped_lines(result.search):
        click.echo(line, err=True)
    for path in paths:
        click.echo(path, err=True)


if __name__ == "__main__":
    main()
