"""Click plumbing shared by the analysis commands: the project's command class and shared
options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

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
