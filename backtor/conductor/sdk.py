"""conductor-python behind one module: its polled `Task` in, Backtor's typed records out.

Task handlers take a `TaskRun` and return a `TaskOutcome`, so the simulation can call them
with the twin's tasks; only this module knows the SDK's classes.
"""

# No `from __future__ import annotations`: conductor-python reads the `Task` annotation of
# the execute function at run time to decide whether to pass the whole task.

import os
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from conductor.client.worker.worker import Worker

from backtor.conductor.payloads import TaskRun, TaskStatus, from_epoch_ms
from backtor.conductor.results import TaskOutcome

Handler = Callable[[TaskRun], TaskOutcome]


def task_run(task: Task) -> TaskRun:
    """The SDK's Task as Backtor's TaskRun."""
    try:
        status = TaskStatus(str(task.status))
    except ValueError:
        status = TaskStatus.IN_PROGRESS  # a polled task is in progress by definition
    return TaskRun(
        task_id=str(task.task_id),
        task_type=str(task.task_type or task.task_def_name or ""),
        reference_name=str(task.reference_task_name or ""),
        status=status,
        workflow_id=str(task.workflow_instance_id or ""),
        input=MappingProxyType(dict(task.input_data or {})),
        output=MappingProxyType(dict(task.output_data or {})),
        start_time=from_epoch_ms(task.start_time),
        end_time=from_epoch_ms(task.end_time),
        update_time=from_epoch_ms(task.update_time),
        scheduled_time=from_epoch_ms(task.scheduled_time),
        retry_count=int(task.retry_count or 0),
        poll_count=int(task.poll_count or 0),
        callback_after_seconds=int(task.callback_after_seconds or 0),
        response_timeout_seconds=int(task.response_timeout_seconds or 0),
        worker_id=task.worker_id,
    )


def task_result(task: Task, outcome: TaskOutcome) -> TaskResult:
    result = TaskResult(
        task_id=task.task_id,
        workflow_instance_id=task.workflow_instance_id,
        status=TaskResultStatus(outcome.status),
        output_data=dict(outcome.output),
    )
    if outcome.reason is not None:
        result.reason_for_incompletion = outcome.reason
    if outcome.status == "IN_PROGRESS":
        result.callback_after_seconds = outcome.callback_after_seconds
    return result


class SdkTask:
    """A handler as conductor-python's execute function (picklable: runners are spawned)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, task: Task) -> TaskResult:
        return task_result(task, self.handler(task_run(task)))


class StoppableWorker(Worker):  # type: ignore[misc]
    """A Worker that stops polling once its runner process is told to stop.

    `stopping` and `on_spawn` are module-level functions (they are pickled into the runner);
    `on_spawn` runs in the freshly spawned runner's main thread, before it polls.
    """

    def __init__(
        self,
        task_type: str,
        handler: Handler,
        *,
        stopping: Callable[[], bool],
        on_spawn: Callable[[], None],
        poll_interval: int,
        thread_count: int = 1,
        **options: Any,
    ) -> None:
        self._built_in_pid = os.getpid()
        self._stopping = stopping
        self._on_spawn = on_spawn
        super().__init__(
            task_type,
            SdkTask(handler),
            poll_interval=poll_interval,
            thread_count=thread_count,
            **options,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if os.getpid() != state.get("_built_in_pid"):
            self._on_spawn()

    @property
    def paused(self) -> bool:
        return self._stopping() or bool(getattr(self, "_paused_by_config", False))

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused_by_config = value


def task_handler(conductor_api_url: str, workers: list[StoppableWorker]) -> Any:
    """conductor-python's TaskHandler for these workers: one runner process each."""
    # Imported here: importing the automator switches multiprocessing to "spawn".
    from conductor.client.automator.task_handler import TaskHandler
    from conductor.client.configuration.configuration import Configuration

    return TaskHandler(
        workers=workers,
        configuration=Configuration(server_api_url=conductor_api_url),
        scan_for_annotated_workers=False,
    )
