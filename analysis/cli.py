"""Click plumbing shared by the analysis commands: help aliases, shared options, and user errors
reported as one `Error: ...` line with exit status 2 instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cifar_mlflow.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class OneLineUsageError(click.UsageError):
    """A usage error (exit status 2) shown without click's usage banner."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class AnalysisCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise OneLineUsageError(error.format_message(), ctx) from error

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise OneLineUsageError(str(error), ctx) from error


def command(function: F) -> click.Command:
    return click.command(cls=AnalysisCommand, context_settings=CONTEXT_SETTINGS)(function)


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
