"""One self-contained HTML report of the whole study: `python -m analysis.report`.

Every figure and table of the source report (docs/analysis.md) from the latest finished sweep
of each built-in study, the best configuration of each model, and links to the runs. Images
are embedded as data URIs and the styling is inline, so the file opens anywhere without
network access. A study that has not been run is listed as missing.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
import pandas as pd

from analysis import compute, frames, tables
from analysis.cli import command, experiment_option, interval_option
from analysis.figures import StudyFigures, study_figures
from analysis.plots import png_bytes
from analysis.query import AnalysisError, Sweep, Tracking, run_url
from analysis.report_sections import compute_html, conclusions_html, img, savings_html
from analysis.search import SearchFigures, search_figures, top_columns
from analysis.tables import Column
from cifar_mlflow import schema
from cifar_mlflow.reachability import is_server_uri, redact_uri


@dataclass(frozen=True)
class Section:
    """A row of docs/analysis.md's table: which study answers which question, what was reported."""

    study: str
    curves: str  # label of the curves figure
    question: str
    reported: str
    weights: str | None = None  # label of the weights figure of a best_* study
    table: str | None = None  # label of the study's own table


SECTIONS = (
    Section("activation", "Figure 1", "Effect of the non-linearity (MLP)", "relu best"),
    Section(
        "lr", "Figure 2", "Effect of the learning rate (ResNet18, Adam)", "0.001 best, 0.1 worst"
    ),
    Section(
        "patch",
        "Figure 3",
        "Effect of the patch size (MLP-Mixer)",
        "2/4/8 similar, 16 worst; larger patch = faster",
        table="Table 1",
    ),
    Section(
        "best_resnet",
        "Figure 4",
        "Best ResNet18 and its first-layer 3x3 kernels",
        "test accuracy 90.2 %",
        weights="Figure 5",
    ),
    Section(
        "best_mixer",
        "Figure 6",
        "Best MLP-Mixer and its first token-mixing layer",
        "test accuracy 77.9 %",
        weights="Figure 7",
    ),
)
BEST_COLUMNS = (
    Column("Model", "model"),
    Column("Study", "study"),
    Column("Setting", "setting"),
    Column("Seeds", "seeds", "d"),
    Column("Best valid accuracy (%)", schema.METRIC_BEST_VALID_ACC, ".2f", 100, spread=True),
    Column("Test accuracy (%)", schema.METRIC_TEST_ACC, ".2f", 100, spread=True),
)
CHAMPION_COLUMNS = (
    Column("Study", "study"),
    Column("Registered model", "name"),
    Column("Version", "version"),
    Column("Alias", "alias"),
    Column("Model", "model"),
    Column("Best valid accuracy (%)", schema.METRIC_BEST_VALID_ACC, ".2f", 100),
    Column("Test accuracy (%)", schema.METRIC_TEST_ACC, ".2f", 100),
)
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th { background: #f4f4f4; }
img { max-width: 100%; }
.missing { background: #fff4e5; border-left: 4px solid #f0a030; padding: .5em 1em; }
.note { color: #666; font-size: .9em; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


@dataclass
class StudyResult:
    section: Section
    figures: StudyFigures | None
    missing_reason: str | None = None
    progress: pd.DataFrame | None = None  # `compute.progress` of every trial
    interval: str = "spread"  # what tables show around a mean (`tables.INTERVALS`)


def collect(
    tracking: Tracking, experiment: str | None = None, interval: str = "spread"
) -> list[StudyResult]:
    """Query and draw every built-in study; a study without a usable sweep is kept as missing."""
    results = []
    for section in SECTIONS:
        sweep = tracking.latest_sweep(section.study, experiment)
        if sweep is None:
            results.append(StudyResult(section, None, "no finished sweep"))
            continue
        try:
            figures = study_figures(tracking, sweep, interval)
        except AnalysisError as error:
            results.append(StudyResult(section, None, str(error)))
            continue
        progress = trial_progress(tracking, figures.trials)
        results.append(StudyResult(section, figures, None, progress, interval))
    return results


def trial_progress(tracking: Tracking, trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial and epoch: validation accuracy and training seconds (`compute.progress`)."""
    return compute.progress(tracking.history(trials["run_id"], compute.HISTORY_METRICS))


@dataclass
class SearchResult:
    figures: SearchFigures
    compute: str  # HTML: what its early stopping saved


def _search_result(tracking: Tracking, sweep: Sweep) -> SearchResult:
    trials = tracking.trials(sweep)
    savings = savings_html(trial_progress(tracking, trials), trials)
    return SearchResult(search_figures(tracking, sweep), savings)


def collect_searches(tracking: Tracking, experiment: str | None = None) -> list[SearchResult]:
    """The latest finished sweep of every searched study, drawn; none when no search ran."""
    return [
        _search_result(tracking, tracking.find_sweep(study, experiment))
        for study in tracking.searched_studies(experiment)
    ]


def _search_html(found: SearchResult, tracking_uri: str) -> str:
    result = found.figures
    sweep, search = result.sweep, result.search
    stopped = int((search["outcome"] == "stopped").sum())
    parts = [
        f"<h2>Search <code>{html.escape(sweep.study)}</code></h2>",
        f"<p>{len(search)} trials, {stopped} stopped early; latest sweep: "
        f"{_run_ref(tracking_uri, sweep.experiment_id, sweep.run_id)}. Searched: "
        f"{html.escape(', '.join(sweep.varied))}.</p>",
        found.compute,
        *(img(png_bytes(figure), stem) for stem, figure in result.figures.items()),
        "<h3>Top trials</h3>",
        tables.html(tables.display(result.top, top_columns(result.top, sweep.varied))),
    ]
    return "\n".join(parts)


def _run_ref(tracking_uri: str, experiment_id: str, run_id: str, text: str | None = None) -> str:
    url = run_url(tracking_uri, experiment_id, run_id)
    label = html.escape(text or run_id)
    return f'<a href="{html.escape(url)}">{label}</a>' if url else f"<code>{label}</code>"


def _best_table(results: list[StudyResult], tracking_uri: str) -> str:
    done = [result.figures for result in results if result.figures is not None]
    if not done:
        return '<p class="missing">No study has been run yet.</p>'
    trials = pd.concat(
        [figures.trials.assign(study=figures.sweep.study) for figures in done], ignore_index=True
    )
    best = frames.best_settings(trials)
    shown = tables.display(best, BEST_COLUMNS).map(html.escape)
    by_id = trials.set_index("run_id")
    configs, runs = [], []
    for _, row in best.iterrows():
        first = by_id.loc[row["run_ids"][0]]
        items = "".join(
            f"<li><code>{html.escape(k)}={html.escape(v)}</code></li>"
            for k, v in frames.configuration(first).items()
        )
        configs.append(f"<details><summary>show</summary><ul>{items}</ul></details>")
        runs.append(
            " ".join(
                _run_ref(tracking_uri, by_id.loc[run_id, "experiment_id"], run_id)
                for run_id in row["run_ids"]
            )
        )
    shown = shown.assign(Configuration=configs, Runs=runs)
    return (
        tables.html(shown, escape=False)
        + '<p class="note">Chosen on validation accuracy (mean over seeds); the test accuracy '
        "is reported, not used for the choice.</p>"
    )


def _champions_html(champions: pd.DataFrame) -> str:
    """Each study's registered champion and how to load, serve or use it."""
    if champions.empty:
        return (
            '<p class="missing">No model registered yet: a sweep registers its best trial as '
            "<code>cifar10-&lt;study&gt;@champion</code>.</p>"
        )
    shown = tables.display(champions, CHAMPION_COLUMNS).map(html.escape)
    uris = [f"models:/{row.name}@{row.alias}" for row in champions.itertuples()]
    shown["Load"] = [
        f"<code>mlflow.pyfunc.load_model(&quot;{html.escape(uri)}&quot;)</code>" for uri in uris
    ]
    example = html.escape(uris[0])
    return tables.html(shown, escape=False) + (
        '<p class="note">Chosen on validation accuracy; the test accuracy is reported. A model '
        "takes image files (a column <code>image</code>) and returns per image its class and "
        "the ten class probabilities; <code>mlflow.pytorch.load_model</code> gives its network. "
        "Serve it with <code>mlflow models serve -m "
        f"{example} --env-manager local</code>, or classify image files with "
        f"<code>python -m cifar_mlflow predict --model {example} FILE_OR_DIR</code>.</p>"
    )


def _section_html(result: StudyResult, tracking_uri: str) -> str:
    section, figures = result.section, result.figures
    labels = " + ".join(filter(None, [section.curves, section.weights, section.table]))
    parts = [
        f"<h2>{html.escape(labels)}: {html.escape(section.question)}</h2>",
        f"<p>Study <code>{section.study}</code>. Source report: "
        f"{html.escape(section.reported)}.</p>",
    ]
    if figures is None:
        reason = html.escape(result.missing_reason or "")
        parts.append(
            f'<p class="missing">Missing: study <code>{section.study}</code> ({reason}). Run it '
            f"with <code>mlflow run . -e sweep -P study={section.study}</code>.</p>"
        )
        return "\n".join(parts)
    sweep = figures.sweep
    parts.append(f"<p>Sweep: {_run_ref(tracking_uri, sweep.experiment_id, sweep.run_id)}</p>")
    parts.append(f"<h3>{section.curves}</h3>{img(png_bytes(figures.curves), section.curves)}")
    summary = frames.seed_stats(figures.trials, "setting", frames.SUMMARY_METRICS)
    parts.append(tables.html(tables.display(summary, tables.SUMMARY_COLUMNS, result.interval)))
    if section.table is not None:
        table1 = frames.table1(figures.trials)
        table = tables.display(table1, tables.TABLE1_COLUMNS, result.interval)
        parts.append(f"<h3>{section.table}</h3>{tables.html(table)}")
    parts.append(conclusions_html(section.study, figures.trials))
    if result.progress is not None:
        parts.append(compute_html(section.study, result.progress, figures.trials))
    if section.weights is not None:
        parts.append(f"<h3>{section.weights}</h3>")
        if figures.weights_png is None:
            parts.append('<p class="missing">The best run logged no weights image.</p>')
        else:
            parts.append(img(figures.weights_png, section.weights))
    if figures.best is not None:
        best = figures.best
        ref = _run_ref(tracking_uri, best["experiment_id"], best["run_id"], best["run_name"])
        test_acc = best[f"metrics.{schema.METRIC_TEST_ACC}"]
        parts.append(f"<p>Best run: {ref}, test accuracy {test_acc:.2%}.</p>")
    return "\n".join(parts)


def render_report(
    results: list[StudyResult],
    tracking_uri: str,
    generated: datetime,
    champions: pd.DataFrame | None = None,
    searches: Sequence[SearchResult] = (),
) -> str:
    """The report as one HTML document (pure: everything comes from the arguments)."""
    missing = [result.section.study for result in results if result.figures is None]
    if is_server_uri(tracking_uri):
        where = "Run links open the MLflow UI."
    else:
        where = (
            "Run ids are shown as text: open <code>mlflow ui</code> on this tracking store "
            "to browse them."
        )
    intro = [
        "<h1>CIFAR-10 model study: report</h1>",
        f'<p class="note">Rebuilt from <code>{html.escape(redact_uri(tracking_uri))}</code> '
        f"on {generated:%Y-%m-%d %H:%M %Z}. {where}</p>",
    ]
    if missing:
        intro.append(
            '<p class="missing">Missing studies (no finished sweep with finished trials): '
            + ", ".join(f"<code>{study}</code>" for study in missing)
            + ".</p>"
        )
    body = [
        *intro,
        "<h2>Best configuration of each model</h2>",
        _best_table(results, tracking_uri),
        "<h2>Registered models</h2>",
        _champions_html(champions if champions is not None else pd.DataFrame()),
        *(_section_html(result, tracking_uri) for result in results),
        *(_search_html(search, tracking_uri) for search in searches),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>CIFAR-10 model study</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


@command
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
)
@interval_option
@experiment_option
def main(output: Path, interval: str, experiment: str | None) -> None:
    """Write one self-contained HTML report of every study, figure and table."""
    tracking = Tracking()
    results = collect(tracking, experiment, interval)
    searches = collect_searches(tracking, experiment)
    output.write_text(
        render_report(
            results,
            tracking.tracking_uri,
            datetime.now(timezone.utc),
            tracking.registered_champions(),
            searches,
        ),
        encoding="utf-8",
    )
    click.echo(f"Wrote {output}")
    missing = [result.section.study for result in results if result.figures is None]
    if missing:
        click.echo(f"Missing studies: {', '.join(missing)}", err=True)


if __name__ == "__main__":
    main()
