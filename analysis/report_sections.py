"""The report's evidence parts (issue 24), as HTML: a study's conclusions with their confidence
beside the source report's claims, and its accuracy against the compute it spent.

Pure: frames in, HTML text out; `analysis.report` queries and places them.
"""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from analysis import comparisons, compute, conclusions, tables
from analysis.plots import compute_figure, png_bytes
from analysis.tables import Column
from cifar_mlflow import schema

CLAIM_COLUMNS = ("The source report's claim", "Here", "Why")
COMPUTE_COLUMNS = (
    Column("Setting", "setting"),
    Column("Seeds", "seeds", "d"),
    Column("Training time (s, total)", schema.METRIC_TRAIN_TIME_S, ",.1f"),
    Column("Best valid accuracy (%)", schema.METRIC_BEST_VALID_ACC, ".2f", 100),
)
METHOD_NOTE = (
    '<p class="note">Each setting against the best one on validation accuracy (mean over '
    "seeds): the best one's lead with its 95 % interval and p-value from Welch's t-test over "
    "seeds, Holm-corrected for the study's comparisons; a lead is a conclusion only when that "
    "p-value is under 0.05. The test accuracy is reported, never used to choose. See "
    "<code>docs/statistics.md</code>; the numbers: <code>python -m analysis.compare --study "
    "{study}</code>.</p>"
)


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _items(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def conclusions_html(study: str, trials: pd.DataFrame) -> str:
    """The study's conclusions, the source's claims held or not shown, and how they were made."""
    table = comparisons.compare_settings(trials)
    parts = ["<h3>Conclusions</h3>", _items(conclusions.conclusions(table))]
    claims = conclusions.check_claims(study, table)
    if claims:
        shown = pd.DataFrame(
            [(claim.text, verdict, why) for claim, verdict, why in claims],
            columns=list(CLAIM_COLUMNS),
        )
        parts.append(tables.html(shown))
    parts.append(METHOD_NOTE.format(study=html.escape(study)))
    return "\n".join(parts)


def _threshold_cells(summary: pd.DataFrame, name: str) -> list[str]:
    cells = []
    for seconds, reached, seeds in zip(
        summary[f"seconds_to_{name}"], summary[f"reached_{name}"], summary["seeds"], strict=True
    ):
        if reached == 0 or math.isnan(seconds):
            cells.append("not reached")
        else:
            some = "" if reached == seeds else f" ({reached} of {seeds} seeds)"
            cells.append(f"{seconds:,.1f}{some}")
    return cells


def compute_html(study: str, progress: pd.DataFrame, trials: pd.DataFrame) -> str:
    """Accuracy against training seconds, and per setting the seconds to each threshold."""
    if progress.empty:
        return '<p class="missing">No per-epoch history to measure compute with.</p>'
    times = compute.time_to_accuracy(progress)
    summary = compute.per_setting(times, trials)
    shown = tables.display(summary, COMPUTE_COLUMNS)
    best = progress[schema.METRIC_VALID_ACC].max()
    for fraction in compute.FRACTIONS:
        name = compute.threshold_name(fraction)
        header = f"Seconds to {name} % of best ({fraction * best * 100:.1f} %)"
        shown[header] = _threshold_cells(summary, name)
    figure = compute_figure(progress, trials, f"Study {study}: accuracy against compute")
    return "\n".join(
        [
            "<h3>Accuracy against compute</h3>",
            img(png_bytes(figure), f"{study} accuracy against compute"),
            tables.html(shown),
            '<p class="note">Training seconds: the sum of the epochs\' training passes '
            f"(<code>{schema.METRIC_EPOCH_TIME_S}</code>), means over seeds. The thresholds are "
            "fractions of the "
            f"best validation accuracy of any run of this sweep ({best:.2%}); a mean counts the "
            "seeds that reached it.</p>",
        ]
    )


def savings_html(progress: pd.DataFrame, trials: pd.DataFrame) -> str:
    """What a search's early stopping saved against running every trial to its last epoch."""
    if progress.empty:
        return ""
    savings = compute.early_stopping_savings(compute.time_to_accuracy(progress), trials)
    return f"<p>Compute: {html.escape(savings.describe())}</p>"
