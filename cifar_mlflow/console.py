"""How every command talks to people: one line per user error, exit statuses, a quiet console.

Every command of the project (training, sweeps, the server, the analysis) is a `Command` or
`Group` from here, so a user error is reported the same way everywhere: `Error: <one line>` on
stderr and exit status 2, never a traceback. By default MLflow's own INFO lines (system-metrics
monitor started and stopped, and the like) and its pickle warning are hidden; `-v/--verbose` on
any command shows them. Credentials in MLFLOW_TRACKING_URI are moved out of it before anything
runs, so that no line of the project or of MLflow can print them.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar, cast

import click

from cifar_mlflow.errors import TrainingError, UserError
from cifar_mlflow.reachability import move_uri_credentials_to_environment

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_USER_ERROR = 2
EXIT_TRAINING_FAILED = 1
EXIT_INTERRUPTED = 130
# MLflow reads it when it is imported and when it configures a new process (Ray workers).
LOGGING_LEVEL_VARIABLE = "MLFLOW_LOGGING_LEVEL"
# MLflow prints "View run … at: URL" on stdout whenever a run on a server ends: a second link
# beside the project's own, on every trial, and the URI as given, credentials included.
RUN_LINKS_VARIABLE = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
# MLflow warns on every model pickled by cloudpickle; this project chose it on purpose (see
# tracking.model_logging). The filter sits on the loggers that emit the warnings, not on a
# handler: MLflow replaces its handlers whenever it is imported, which in this project happens
# after the options are read.
EXPECTED_WARNINGS = (
    "Passing a Python object as `python_model` causes it to be serialized using CloudPickle",
    "Saving pytorch model by Pickle or CloudPickle format",
)
EXPECTED_WARNINGS_LOGGERS = ("mlflow.pyfunc", "mlflow.pytorch")


class _ExpectedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(EXPECTED_WARNINGS)


_EXPECTED_WARNINGS_FILTER = _ExpectedWarnings()


def set_verbosity(verbose: bool) -> None:
    """MLflow's INFO lines and expected warnings shown with `verbose`; otherwise the level
    MLFLOW_LOGGING_LEVEL names (the way to ask for them under `mlflow run`), WARNING if unset."""
    if verbose:
        os.environ[LOGGING_LEVEL_VARIABLE] = "INFO"
    apply_logging_level()


def apply_logging_level() -> None:
    """Apply `MLFLOW_LOGGING_LEVEL` to MLflow's loggers, whether MLflow is imported yet or not.

    A Ray task calls it too: its worker imported MLflow with the worker's own environment.
    """
    level = os.environ.get(LOGGING_LEVEL_VARIABLE, "WARNING").upper()
    logging.getLogger("mlflow").setLevel(level)
    for emitter in map(logging.getLogger, EXPECTED_WARNINGS_LOGGERS):
        if logging.getLevelName(level) < logging.WARNING:
            emitter.removeFilter(_EXPECTED_WARNINGS_FILTER)
        else:
            emitter.addFilter(_EXPECTED_WARNINGS_FILTER)


def worker_settings() -> dict[str, str]:
    """This console's settings, for a worker process to apply with `apply_logging_level`."""
    return {
        name: os.environ[name]
        for name in (LOGGING_LEVEL_VARIABLE, RUN_LINKS_VARIABLE)
        if name in os.environ
    }


def _verbose_callback(ctx: click.Context, param: click.Parameter, verbose: bool) -> None:
    set_verbosity(verbose)


def _verbose_option() -> click.Option:
    return click.Option(
        ["-v", "--verbose"],
        is_flag=True,
        is_eager=True,
        expose_value=False,
        callback=_verbose_callback,
        help="Show MLflow's own log lines.",
    )


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: the end of every user error."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class InterruptedWithHint(KeyboardInterrupt):
    """Ctrl-C or SIGTERM in a command whose work can be continued; the message says how."""


def hint_when_interrupted(hint: str) -> Callable[[F], F]:
    """A command that can continue what an interruption stopped says how, in one line."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except InterruptedWithHint:
                raise
            except KeyboardInterrupt as interruption:
                raise InterruptedWithHint(hint) from interruption

        return cast(F, wrapper)

    return decorate


class _OneLineErrors:
    """Runs a click command so that each way of failing ends in one line and its status.

    This is the one place that maps errors to exit statuses: `UserError` (and click's usage
    errors) 2, `TrainingError` 1, an interruption 130.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any):
        # SIGTERM is handled like Ctrl-C: a run ends KILLED and keeps its checkpoint.
        signal.signal(signal.SIGTERM, _interrupt)
        os.environ.setdefault(LOGGING_LEVEL_VARIABLE, "WARNING")
        os.environ[RUN_LINKS_VARIABLE] = "true"
        move_uri_credentials_to_environment()
        try:
            status = super().main(args, prog_name, standalone_mode=False, **extra)  # type: ignore[misc]
        except click.UsageError as error:
            fail(error.format_message())
        except UserError as error:
            fail(str(error))
        except TrainingError as error:
            click.echo(error.report(), err=True)
            sys.exit(EXIT_TRAINING_FAILED)
        except (click.Abort, KeyboardInterrupt) as interruption:
            # click turns an interruption into Abort, keeping it as the cause.
            hint = interruption.__cause__ if isinstance(interruption, click.Abort) else interruption
            hinted = isinstance(hint, InterruptedWithHint)
            click.echo(f"Aborted: {hint}" if hinted else "Aborted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(status if isinstance(status, int) else 0)


class Command(_OneLineErrors, click.Command):
    """A command with `-h`, `-v/--verbose` and one-line errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)
        self.params.append(_verbose_option())


class Group(_OneLineErrors, click.Group):
    """A group whose subcommands are `Command`s; run as a whole with one-line errors."""

    command_class = Command
    group_class = type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)


def command(**kwargs: Any) -> Callable[[Callable], Command]:
    """`click.command` for this project's commands."""
    return click.command(cls=Command, **kwargs)
