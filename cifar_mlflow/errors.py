"""The project's errors, by cause; `console` maps each family to one line and an exit status.

`UserError` and its kinds: a mistake the user can fix (exit status 2, before any run exists
where it can be found that early). `TrainingError` and its kinds: training itself failed
(exit status 1; the run ends FAILED with the reason).
"""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data, malformed study file)."""


class RunNotFoundError(UserError):
    """No run with the given id on the tracking server."""


class ExperimentDeletedError(UserError):
    """The experiment to log to exists but is deleted."""


class NotResumableError(UserError):
    """A run that `--resume` cannot continue: finished, or without a checkpoint."""


class ExecutorError(UserError):
    """An executor that does not exist, is not installed, or options it does not take."""


class TrackingUriError(UserError):
    """A tracking URI no MLflow store takes."""


class ModelNotUsableError(UserError):
    """A model URI with no model behind it, or a model that is no image classifier of ours."""


class OptionError(UserError):
    """A command-line option with a value the command cannot take, or that does not fit."""


class TrainingError(Exception):
    """Training itself failed (e.g. the loss diverged); the run ends FAILED with the reason."""

    def report(self) -> str:
        """What the console prints for it on stderr (before exit status 1)."""
        return f"Error: {self} (the run is marked FAILED)"


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite; training cannot recover from it."""


class DivergedLossError(TrainingError):
    """The training loss is finite but far above chance level: the run diverged."""
