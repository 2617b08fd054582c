"""Errors a user can cause. The CLI prints them as one line with the fix; bugs keep their traceback."""

from __future__ import annotations

# Exit statuses, one per meaning (the README's "Exit status" table).
EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_ROWS_REJECTED = 2
EXIT_RUN_REJECTED = 3
EXIT_CANNOT_LISTEN = 4


class BigrecError(Exception):
    """An error caused by input or state the user controls.

    Args:
        message: What happened, naming the file, row or value.
        hint: How to fix it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DataError(BigrecError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(BigrecError):
    """An option or configuration value cannot be used."""


class ArtifactError(BigrecError):
    """A file the project wrote earlier is missing or damaged."""


class NotTrainedError(BigrecError):
    """A step needs an earlier step that has not run yet."""


class BackendError(BigrecError):
    """TensorFlow or bert4keras is missing or misconfigured."""


class CannotListenError(BigrecError):
    """The server cannot bind its address (in use, or not allowed)."""

    exit_code = EXIT_CANNOT_LISTEN


class StoreBusyError(BigrecError):
    """The feedback store is locked by another writer for longer than the caller waits."""


class WorkerLostError(BigrecError):
    """A multi-worker training run lost one of its workers; nothing was written."""
