"""How every command talks to people: one line per user error, exit statuses, a quiet console.

Every command of the project (training, sweeps, the server, the analysis) is a `Command` or
`Group` from here, so a user error is reported the same way everywhere: `Error: <one line>` on
stderr and exit status 2, never a traceback. By default MLflow's own INFO lines (system-metrics
monitor started and stopped, and the like) are hidden; `-v/--verbose` on any command shows them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from cifar_mlflow.errors import TrainingError, UserError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_USER_ERROR = 2
EXIT_TRAINING_FAILED = 1
EXIT_INTERRUPTED = 130
# MLflow reads it when it is imported and when it configures a new process (Ray workers).
LOGGING_LEVEL_VARIABLE = "MLFLOW_LOGGING_LEVEL"
# MLflow warns on every model pickled by cloudpickle; this project chose it on purpose (see
# tracking.callback.log_model). Filtered on the logger that emits it too, which exists before
# MLflow is imported and has configured its handlers.
EXPECTED_WARNINGS = (
    "Passing a Python object as `python_model` causes it to be serialized using CloudPickle",
)
EXPECTED_WARNINGS_LOGGER = "mlflow.pyfunc"


class _ExpectedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(EXPECTED_WARNINGS)


_EXPECTED_WARNINGS_FILTER = _ExpectedWarnings()


def set_verbosity(verbose: bool) -> None:
    """MLflow's INFO lines and expected warnings shown (`verbose`) or hidden."""
    level = "INFO" if verbose else "WARNING"
    os.environ[LOGGING_LEVEL_VARIABLE] = level
    apply_logging_level()


def apply_logging_level() -> None:
    """Apply `MLFLOW_LOGGING_LEVEL` to loggers MLflow configured already (this process)."""
    level = os.environ.get(LOGGING_LEVEL_VARIABLE, "WARNING").upper()
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.setLevel(level)
    for target in (*mlflow_logger.handlers, logging.getLogger(EXPECTED_WARNINGS_LOGGER)):
        if level == "INFO":
            target.removeFilter(_EXPECTED_WARNINGS_FILTER)
        else:
            target.addFilter(_EXPECTED_WARNINGS_FILTER)


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


class _OneLineErrors:
    """Runs a click command so that each way of failing ends in one line and its status."""

    interrupted_message = "Aborted."

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any):
        # SIGTERM is handled like Ctrl-C: a run ends KILLED and keeps its checkpoint.
        signal.signal(signal.SIGTERM, _interrupt)
        os.environ.setdefault(LOGGING_LEVEL_VARIABLE, "WARNING")
        try:
            status = super().main(args, prog_name, standalone_mode=False, **extra)  # type: ignore[misc]
        except click.UsageError as error:
            fail(error.format_message())
        except UserError as error:
            fail(str(error))
        except TrainingError as error:
            click.echo(f"Error: {error} (the run is marked FAILED)", err=True)
            sys.exit(EXIT_TRAINING_FAILED)
        except (click.Abort, KeyboardInterrupt):
            click.echo(self.interrupted_message, err=True)
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
