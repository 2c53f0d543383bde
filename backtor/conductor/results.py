"""What a task handler answers: Backtor's own record, turned into Conductor's by the adapter.

Handlers (backtor.workers.tasks, backtor.storage.worker) return a `TaskOutcome`; the SDK
adapter (backtor.conductor.sdk) or the simulation (through the TaskQueue port) reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskOutcome:
    status: str  # COMPLETED, FAILED, FAILED_WITH_TERMINAL_ERROR or IN_PROGRESS
    output: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    callback_after_seconds: int = 0


def completed(output: Mapping[str, Any]) -> TaskOutcome:
    return TaskOutcome("COMPLETED", dict(output))


def in_progress(output: Mapping[str, Any], callback_after_seconds: int) -> TaskOutcome:
    """IN_PROGRESS: Conductor hands the task out again after the callback delay."""
    return TaskOutcome("IN_PROGRESS", dict(output), None, callback_after_seconds)


def terminal(reason: str) -> TaskOutcome:
    """FAILED_WITH_TERMINAL_ERROR: no retry can help, the reason says why."""
    return TaskOutcome("FAILED_WITH_TERMINAL_ERROR", {"error": reason}, reason)


def failed(reason: str) -> TaskOutcome:
    """FAILED: Conductor retries the task as its definition says."""
    return TaskOutcome("FAILED", {"error": reason}, reason)


def handed_back() -> TaskOutcome:
    """IN_PROGRESS with no delay: Conductor queues the task again for another worker."""
    return TaskOutcome("IN_PROGRESS", {}, None, 0)
