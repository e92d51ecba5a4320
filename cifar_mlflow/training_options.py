"""The training options on the command line: one per option the configuration takes."""

from __future__ import annotations

from typing import Any

import click

from cifar_mlflow.config import settings
from cifar_mlflow.console import Command


def training_parameters() -> list[click.Option]:
    """One option per training option (`settings()`: the config's fields and the registered
    models' options), `--data-dir` style, `--data_dir` accepted too.

    `mlflow run` passes undeclared `-P` names spelled as given (`--patch_size`), hence both.
    Values stay text until `TrainConfig.from_overrides` parses and validates them in one place.
    """
    parameters = []
    for setting in settings():
        names = [f"--{setting.name.replace('_', '-')}"]
        if "_" in setting.name:
            names.append(f"--{setting.name}")
        default = setting.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        # `--compile` alone means true; `--compile false` is what `mlflow run` passes.
        switch = {"flag_value": "true", "is_flag": False} if setting.kind is bool else {}
        help_text = f"{setting.help} [default: {shown}]"
        parameters.append(
            click.Option([*names, setting.name], metavar="VALUE", help=help_text, **switch)
        )
    return parameters


class TrainingCommand(Command):
    """A command that also takes every training option.

    They are added when the command is parsed or shown: reading them imports the registered
    models (and torch), which the other commands and the group's `--help` do not wait for.
    """

    training_options_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.training_options_added:
            self.params[-1:-1] = training_parameters()  # before `--verbose`, the last
            self.training_options_added = True
        return super().get_params(ctx)


def overrides_from(options: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in options.items() if value is not None}
