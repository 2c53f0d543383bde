"""Backtor's one error hierarchy.

Every error Backtor raises on purpose derives from `BacktorError`; stdlib bases are added
where they fit, so `except ValueError` still catches a bad field. The API maps these classes
to HTTP statuses in one table (`backtor.api.errors`); nothing else needs to know statuses.
"""

from __future__ import annotations


class BacktorError(Exception):
    """Base of every error Backtor raises on purpose; `message` is for humans."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidField(BacktorError, ValueError):
    """A value breaks a rule; `field` is its camelCase API name (or a setting's variable)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(BacktorError, LookupError):
    """The thing named does not exist (a spec, a backup)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(BacktorError):
    """The request contradicts the stored state (a name taken, a backup not pinnable)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SettingError(BacktorError, ValueError):
    """An environment variable with a value Backtor cannot use; raised at start."""

    def __init__(self, variable: str, value: str, why: str) -> None:
        super().__init__(f"{variable}={value!r}: {why}")
        self.variable = variable
        self.value = value


class ConductorUnavailable(BacktorError):
    """Conductor could not be reached, or said it is overloaded or down: worth a retry."""


class ConductorRefused(BacktorError):
    """Conductor answered, but not with success (a 4xx or an unexpected 5xx)."""

    def __init__(self, operation: str, status: int, message: str) -> None:
        super().__init__(f"Conductor {operation} failed with HTTP {status}: {message}")
        self.operation = operation
        self.status = status


class ConductorNotFound(ConductorRefused):
    """The workflow, task or definition does not exist in Conductor."""
