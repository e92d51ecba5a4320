"""The sweep command's options for its champion: whether to register it, and the lead it needs.

Kept apart from `champion_evidence`, which imports scipy: the CLI starts without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from cifar_mlflow import schema

F = TypeVar("F", bound=Callable)


def registry_options(command: F) -> F:
    """A sweep's options for its champion: whether to register it, and the lead it needs."""
    for option in (
        click.option(
            "--min-delta",
            "--min_delta",
            "min_delta",
            type=click.FloatRange(min=0, max=1),
            default=0.0,
            show_default=True,
            metavar="FRACTION",
            help="With >= 2 seeds on both sides, the alias moves only if the 95 % interval of "
            f"the challenger's lead in {schema.METRIC_BEST_VALID_ACC} is above this "
            "(0.01 = 1 point).",
        ),
        click.option("--no-register", is_flag=True, help="The same as --register false."),
        click.option(
            "--register",
            type=click.BOOL,
            default=True,
            show_default=True,
            metavar="BOOLEAN",
            help="Register the best trial as cifar10-<study>@champion if it beats the champion.",
        ),
    ):
        command = option(command)
    return command
