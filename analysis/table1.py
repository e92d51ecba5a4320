"""Table 1 of the source report from the latest `patch` sweep: `python -m analysis.table1`.

Per patch size: parameter count, inference time (valid split), training time per epoch and test
accuracy, as mean ± std over seeds when the sweep ran several (`--interval ci`: mean and 95 %
interval).
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from analysis import frames, tables
from analysis.cli import (
    command,
    experiment_option,
    interval_option,
    parent_run_option,
    table_format_option,
    write_or_echo,
)
from analysis.query import AnalysisError, Tracking

STUDY = "patch"


def load_table1(
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tracking: Tracking | None = None,
) -> pd.DataFrame:
    """The numeric Table 1 (see `frames.table1`) of a patch sweep."""
    tracking = tracking or Tracking()
    sweep = tracking.find_sweep(STUDY, experiment, parent_run_id)
    trials = tracking.trials(sweep)
    if trials.empty:
        raise AnalysisError(f"sweep {sweep.run_id} of study {STUDY!r} has no finished trials")
    return frames.table1(trials)


@command
@table_format_option("csv keeps full precision, with mean and std in separate columns.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@interval_option
@experiment_option
@parent_run_option
def main(
    fmt: str,
    output: Path | None,
    interval: str,
    experiment: str | None,
    parent_run_id: str | None,
) -> None:
    """Print Table 1 (per patch size: parameters, timings, test accuracy)."""
    table = load_table1(experiment, parent_run_id)
    write_or_echo(tables.render(table, tables.TABLE1_COLUMNS, fmt, interval), output)


if __name__ == "__main__":
    main()
