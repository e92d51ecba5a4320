"""Click plumbing shared by the analysis commands: the project's command class and shared
options.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from analysis.tables import FORMATS, INTERVALS
from cifar_mlflow import console

F = TypeVar("F", bound=Callable[..., Any])


def command(function: F) -> click.Command:
    """An analysis command: `-h`, `-v/--verbose`, user errors in one line (exit status 2)."""
    return console.command()(function)


def experiment_option(function: F) -> F:
    return click.option(
        "--experiment",
        "-e",
        metavar="NAME",
        help="Search this experiment only (default: find the study's sweeps in every experiment).",
    )(function)


def parent_run_option(function: F) -> F:
    return click.option(
        "--parent-run-id",
        metavar="ID",
        help="Analyse this sweep (parent run) instead of the study's latest finished sweep.",
    )(function)


def output_dir_option(what: str) -> Callable[[F], F]:
    """`--output-dir/-o`, the folder a command writes `what` to."""
    return click.option(
        "--output-dir",
        "-o",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("outputs"),
        show_default=True,
        help=f"Folder for the {what}.",
    )


def table_format_option(
    help_text: str, formats: tuple[str, ...] = FORMATS, default: str = "markdown"
) -> Callable[[F], F]:
    """`--format`: one of the table formats of `analysis.tables` (or `formats`)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(formats),
        default=default,
        show_default=True,
        help=help_text,
    )


def interval_option(function: F) -> F:
    """`--interval`: what a spread over seeds shows, in tables and learning-curve bands."""
    return click.option(
        "--interval",
        type=click.Choice(INTERVALS),
        default="spread",
        show_default=True,
        help="spread: mean ± std in tables, min-max band in curves; ci: the 95 % Student's t "
        "interval of the mean in both. Headers and legends say which.",
    )(function)


def write_or_echo(text: str, output: Path | None) -> None:
    """A table to standard output, or to `output` with a line that says where it went."""
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"Wrote {output}", err=True)
