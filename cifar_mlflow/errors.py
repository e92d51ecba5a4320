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


class TrainingError(Exception):
    """Training itself failed (e.g. the loss diverged); the run ends FAILED with the reason."""


class SweepFailedError(TrainingError):
    """Some trials of a sweep failed; the others finished and are recorded."""
