"""How a storage task ends when it does not complete: the class decides Conductor's status."""

from __future__ import annotations


class TerminalError(Exception):
    """A task that can never succeed as given (bad workerConfig, forbidden path): no retry."""


class RetryableError(Exception):
    """A failure a later attempt may not meet (full disk, database down): Conductor retries."""


class Stopping(Exception):
    """The worker is stopping: the task is handed back to Conductor for another worker."""
