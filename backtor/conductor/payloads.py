"""Conductor's answers as frozen, typed records, parsed once at the edge.

Nothing past `backtor.conductor` reads Conductor's JSON: the core sees `WorkflowRun` and
`TaskRun`. An answer that does not have the shape Conductor documents raises
`ConductorBadAnswer` here instead of turning into a wrong decision later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from backtor.core.errors import ConductorRefused

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_S = TypeVar("_S", bound=StrEnum)


def _empty() -> Mapping[str, Any]:
    return _EMPTY


class ConductorBadAnswer(ConductorRefused):
    """Conductor answered 2xx with something that is not what its API documents."""

    def __init__(self, operation: str, why: str) -> None:
        super().__init__(operation, 200, f"unexpected answer: {why}")


class WorkflowStatus(StrEnum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    TERMINATED = "TERMINATED"

    @property
    def is_open(self) -> bool:
        """Still running or paused: it may yet produce data or be resumed."""
        return self in _OPEN

    @property
    def is_finished(self) -> bool:
        return not self.is_open


_OPEN = frozenset({WorkflowStatus.RUNNING, WorkflowStatus.PAUSED})


class TaskStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    FAILED_WITH_TERMINAL_ERROR = "FAILED_WITH_TERMINAL_ERROR"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"
    SKIPPED = "SKIPPED"

    @property
    def is_open(self) -> bool:
        return self in (TaskStatus.SCHEDULED, TaskStatus.IN_PROGRESS)


@dataclass(frozen=True)
class TaskRun:
    """One execution of a task inside a workflow (a retry is another TaskRun)."""

    task_id: str
    task_type: str
    reference_name: str
    status: TaskStatus
    workflow_id: str = ""
    input: Mapping[str, Any] = field(default_factory=_empty)
    output: Mapping[str, Any] = field(default_factory=_empty)
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    scheduled_time: datetime | None = None
    retry_count: int = 0
    poll_count: int = 0
    callback_after_seconds: int = 0
    response_timeout_seconds: int = 0
    worker_id: str | None = None
    reason: str | None = None


# How the reason of a fenced run begins (the TERMINATE task `start_late` of create_backup.json
# and remove_backup.json).
FENCED = "start fenced: "


@dataclass(frozen=True)
class WorkflowRun:
    """One workflow execution, as Conductor reports it."""

    workflow_id: str
    name: str
    status: WorkflowStatus
    version: int | None = None
    correlation_id: str | None = None
    input: Mapping[str, Any] = field(default_factory=_empty)
    output: Mapping[str, Any] = field(default_factory=_empty)
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    reason: str | None = None
    tasks: tuple[TaskRun, ...] = ()

    @property
    def fire_id(self) -> int | None:
        """The Backtor fire a create_backup was started for (None for other workflows)."""
        value = self.input.get("fireId")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def tasks_of_type(self, task_type: str) -> tuple[TaskRun, ...]:
        return tuple(task for task in self.tasks if task.task_type == task_type)

    @property
    def fenced(self) -> bool:
        """A create_backup or remove_backup that its start fence ended before its storage task
        (no backup taken, nothing removed): Conductor received the start after its `startBy`
        (docs/scheduling.md, "The start fence")."""
        return self.output.get("fenced") is True or (self.reason or "").startswith(FENCED)


def from_epoch_ms(epoch_ms: Any) -> datetime | None:
    """Conductor's epoch milliseconds (0 or absent means unset) as an aware datetime."""
    if isinstance(epoch_ms, bool):
        return None
    try:
        value = int(epoch_ms)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(value / 1000, UTC) if value > 0 else None


def to_epoch_ms(moment: datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


def parse_workflow(data: Any, operation: str = "get_workflow") -> WorkflowRun:
    if not isinstance(data, Mapping):
        raise ConductorBadAnswer(operation, f"a workflow is not an object: {type(data).__name__}")
    workflow_id = data.get("workflowId")
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ConductorBadAnswer(operation, "a workflow without workflowId")
    tasks = data.get("tasks") or []
    if not isinstance(tasks, list):
        raise ConductorBadAnswer(operation, f"workflow {workflow_id}: tasks is not a list")
    version = data.get("workflowVersion", data.get("version"))
    return WorkflowRun(
        workflow_id=workflow_id,
        name=str(data.get("workflowName") or data.get("workflowType") or ""),
        status=_status(WorkflowStatus, data.get("status"), operation, workflow_id),
        version=version if isinstance(version, int) else None,
        correlation_id=_optional_str(data.get("correlationId")),
        input=_frozen(data.get("input")),
        output=_frozen(data.get("output")),
        start_time=from_epoch_ms(data.get("startTime")),
        end_time=from_epoch_ms(data.get("endTime")),
        update_time=from_epoch_ms(data.get("updateTime")),
        reason=_optional_str(data.get("reasonForIncompletion")),
        tasks=tuple(parse_task(task, operation) for task in tasks),
    )


def parse_task(data: Any, operation: str = "get_task") -> TaskRun:
    if not isinstance(data, Mapping):
        raise ConductorBadAnswer(operation, f"a task is not an object: {type(data).__name__}")
    task_id = data.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise ConductorBadAnswer(operation, "a task without taskId")
    return TaskRun(
        task_id=task_id,
        task_type=str(data.get("taskType") or data.get("taskDefName") or ""),
        reference_name=str(data.get("referenceTaskName") or ""),
        status=_status(TaskStatus, data.get("status"), operation, task_id),
        workflow_id=str(data.get("workflowInstanceId") or ""),
        input=_frozen(data.get("inputData")),
        output=_frozen(data.get("outputData")),
        start_time=from_epoch_ms(data.get("startTime")),
        end_time=from_epoch_ms(data.get("endTime")),
        update_time=from_epoch_ms(data.get("updateTime")),
        scheduled_time=from_epoch_ms(data.get("scheduledTime")),
        retry_count=_int(data.get("retryCount")),
        poll_count=_int(data.get("pollCount")),
        callback_after_seconds=_int(data.get("callbackAfterSeconds")),
        response_timeout_seconds=_int(data.get("responseTimeoutSeconds")),
        worker_id=_optional_str(data.get("workerId")),
        reason=_optional_str(data.get("reasonForIncompletion")),
    )


def _status(kind: type[_S], value: Any, operation: str, owner: str) -> _S:
    try:
        return kind(value)
    except ValueError:
        raise ConductorBadAnswer(operation, f"{owner}: unknown {kind.__name__} {value!r}") from None


def _frozen(value: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else _EMPTY


def _optional_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
