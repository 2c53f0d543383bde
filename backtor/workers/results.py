"""TaskResult builders shared by every Conductor task function Backtor ships."""

# No `from __future__ import annotations`: kept like the task modules that import it.

from typing import Any

from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus


def result(task: Task, status: TaskResultStatus, output: dict[str, Any]) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        workflow_instance_id=task.workflow_instance_id,
        status=status,
        output_data=output,
    )


def terminal(task: Task, reason: str) -> TaskResult:
    """FAILED_WITH_TERMINAL_ERROR: no retry can help, the reason says why."""
    failure = result(task, TaskResultStatus.FAILED_WITH_TERMINAL_ERROR, {"error": reason})
    failure.reason_for_incompletion = reason
    return failure


def failed(task: Task, reason: str) -> TaskResult:
    """FAILED: Conductor retries the task as its definition says."""
    failure = result(task, TaskResultStatus.FAILED, {"error": reason})
    failure.reason_for_incompletion = reason
    return failure


def handed_back(task: Task) -> TaskResult:
    """IN_PROGRESS with no delay: Conductor queues the task again for another worker."""
    back = result(task, TaskResultStatus.IN_PROGRESS, {})
    back.callback_after_seconds = 0
    return back
