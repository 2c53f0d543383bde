"""The Conductor boundary: exactly the calls Backtor makes, as Protocols.

`ConductorClient` (backtor.conductor.http) talks to a real server; `ConductorTwin`
(backtor.conductor.twin) is an in-memory model for fast, deterministic simulation. The
contract suite (tests/contract) runs the same tests on both; a behaviour the twin models
without a contract test that passes on the real server is a defect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from backtor.conductor.payloads import TaskRun, WorkflowRun

JsonObject = dict[str, Any]


class TaskQueue(Protocol):
    """What a worker does: poll a task of a type, report its result.

    The storage workers poll through conductor-python's TaskHandler; `backtor worker`
    (thread isolation), the simulation and the contract suite poll through this, so the
    twin's queue is held to the server's.
    """

    def poll_task(self, task_type: str, worker_id: str) -> TaskRun | None: ...

    def poll_tasks(
        self, task_type: str, worker_id: str, count: int, wait_ms: int = 0
    ) -> list[TaskRun]:
        """Up to `count` tasks at once, waiting up to `wait_ms` while none is queued."""
        ...

    def get_task(self, task_id: str) -> TaskRun:
        """One task execution (a storage worker asks whether its run is still wanted)."""
        ...

    def update_task(
        self,
        task: TaskRun,
        status: str,
        output: Mapping[str, Any] | None = None,
        *,
        callback_after_seconds: int = 0,
        reason: str | None = None,
        worker_id: str = "",
    ) -> None: ...


class Conductor(TaskQueue, Protocol):
    """Backtor's control plane: definitions and workflow executions.

    It includes the task queue: Backtor reports its own tasks for a worker that died
    (backtor.scheduling.stalls).
    """

    def is_healthy(self) -> bool: ...

    def get_task_def(self, name: str) -> JsonObject | None: ...

    def create_task_defs(self, definitions: Sequence[Mapping[str, Any]]) -> None: ...

    def update_task_def(self, definition: Mapping[str, Any]) -> None: ...

    def get_workflow_def(self, name: str, version: int) -> JsonObject | None: ...

    def put_workflow_defs(self, definitions: Sequence[Mapping[str, Any]]) -> None: ...

    def start_workflow(
        self,
        name: str,
        *,
        input: Mapping[str, Any],
        correlation_id: str,
        version: int | None = None,
    ) -> str: ...

    def workflows_by_correlation(
        self, name: str, correlation_ids: Sequence[str], *, include_closed: bool
    ) -> dict[str, list[WorkflowRun]]:
        """Executions of `name` per correlation id, without their tasks."""
        ...

    def get_workflow(self, workflow_id: str, *, include_tasks: bool = True) -> WorkflowRun: ...

    def terminate_workflow(self, workflow_id: str, reason: str) -> None: ...

    def retry_workflow(self, workflow_id: str) -> None: ...

    def restart_workflow(self, workflow_id: str) -> None: ...

    def close(self) -> None: ...
