"""User-facing errors: the CLI prints their one-line message and exits with status 2."""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data, malformed study file)."""


class TrainingError(Exception):
    """Training itself failed (e.g. the loss diverged); the run ends FAILED with the reason."""
