"""A study's conclusions with their confidence: `python -m analysis.compare --study activation`.

Every setting of the study's latest finished sweep (or --parent-run-id) against the best one
on validation accuracy: the best one's lead with its 95 % interval and a Holm-corrected p-value
(Welch's t-test over seeds), the test accuracy reported beside it, then the conclusions as
sentences and the source report's own claims, each held or not shown. See docs/statistics.md.
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from analysis import comparisons, conclusions, frames, tables
from analysis.cli import (
    command,
    experiment_option,
    parent_run_option,
    table_format_option,
    write_or_echo,
)
from analysis.query import AnalysisError, Tracking
from analysis.tables import Column
from cifar_mlflow import schema

FORMATS = ("text", *tables.FORMATS)
COLUMNS = (
    Column("Setting", "setting"),
    Column("Seeds", "seeds", "d"),
    Column("Best valid accuracy (%)", schema.METRIC_BEST_VALID_ACC, ".2f", 100, spread=True),
    Column("Test accuracy (%)", schema.METRIC_TEST_ACC, ".2f", 100, spread=True),
    Column("Best's lead (points)", "lead", ".2f", 100, spread=True),
    Column("p (Welch, Holm)", "p_shown"),
)
CSV_COLUMNS = (
    "setting",
    "seeds",
    *(f"{m}_{s}" for m in comparisons.METRICS for s in ("mean", "std", "ci_low", "ci_high")),
    "best",
    "difference",
    "low",
    "high",
    "p_value",
    "p_holm",
    "significant",
    "test_acc_difference",
    "test_acc_low",
    "test_acc_high",
    "test_acc_p_value",
    "note",
)


def load_comparison(
    study: str | None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tracking: Tracking | None = None,
) -> tuple[str, pd.DataFrame]:
    """The study's name and its comparison frame (`comparisons.compare_settings`)."""
    tracking = tracking or Tracking()
    sweep = tracking.find_sweep(study, experiment, parent_run_id)
    trials = tracking.trials(sweep)
    if trials.empty:
        raise AnalysisError(f"sweep {sweep.run_id} of study {sweep.study!r} has no finished trials")
    return sweep.study, comparisons.compare_settings(frames.with_settings(trials, sweep.varied))


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as display cells: intervals as `mean [low, high]`, untested rows named."""
    p_shown = [
        "best" if row.setting == row.best else (row.note or f"{row.p_holm:.2g}")
        for row in table.itertuples()
    ]
    numeric = table.assign(
        lead_mean=table["difference"],
        lead_ci_low=table["low"],
        lead_ci_high=table["high"],
        p_shown=p_shown,
    )
    shown = tables.display(numeric, COLUMNS, "ci")
    return shown.replace("nan", "")


def claim_lines(study: str, table: pd.DataFrame) -> list[str]:
    return [
        f"{claim.text}: {verdict} ({why})"
        for claim, verdict, why in conclusions.check_claims(study, table)
    ]


def render(study: str, table: pd.DataFrame, fmt: str) -> str:
    """The comparison in one of `FORMATS`; CSV has the numbers only."""
    if fmt == "csv":
        return table[list(CSV_COLUMNS)].to_csv(index=False)
    sentences, claims = conclusions.conclusions(table), claim_lines(study, table)
    shown = shown_table(table)
    if fmt == "latex":
        items = [r"\item " + tables.latex_escape(line) for line in [*sentences, *claims]]
        return tables.latex(shown) + "\n".join([r"\begin{itemize}", *items, r"\end{itemize}", ""])
    bullets = "\n".join(f"- {line}" for line in sentences)
    claimed = "\n".join(f"- {line}" for line in claims) or "- (none about this study)"
    if fmt == "markdown":
        return (
            f"## Study {study}: conclusions\n\n{bullets}\n\n"
            f"### The source report's claims\n\n{claimed}\n\n{tables.markdown(shown)}"
        )
    return (
        f"Study {study}: conclusions\n{bullets}\n\nThe source report's claims\n{claimed}\n\n"
        + tables.markdown(shown)
    )


@command
@click.option("--study", "-s", metavar="NAME", help="Study name (e.g. activation, lr, patch).")
@table_format_option(
    "text, markdown, latex: sentences and table; csv: the numbers.", FORMATS, default="text"
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@experiment_option
@parent_run_option
def main(
    study: str | None,
    fmt: str,
    output: Path | None,
    experiment: str | None,
    parent_run_id: str | None,
) -> None:
    """Compare every setting of a study with its best one, with 95 % intervals and p-values."""
    name, table = load_comparison(study, experiment, parent_run_id)
    write_or_echo(render(name, table, fmt), output)


if __name__ == "__main__":
    main()
