"""The contract suite's driver: the same tests on the twin ("twin") and on a real server ("real").

A test talks to `Backend`: the port's two Protocols, plus `wait_until`, which on the twin
moves its clock in small steps and on the real server polls in real time. The real server
is shared by the whole test session, so every name and correlation id carries a fresh suffix.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import pytest

from backtor.conductor.http import ConductorClient
from backtor.conductor.payloads import TaskRun, WorkflowRun
from backtor.conductor.port import Conductor, JsonObject, TaskQueue
from backtor.conductor.registration import DEFINITIONS
from backtor.conductor.twin import ConductorTwin

T = TypeVar("T")
OWNER = "contract@localhost"


class Operated(Conductor, TaskQueue, Protocol):
    """The port, plus the operator's pause and resume (Conductor's UI has them)."""

    def pause_workflow(self, workflow_id: str) -> None: ...

    def resume_workflow(self, workflow_id: str) -> None: ...


@dataclass
class Backend:
    name: str
    conductor: Operated
    now: Callable[[], datetime]
    step: Callable[[float], None]  # the twin: advance its clock; the real server: sleep
    interval: float

    @property
    def queue(self) -> TaskQueue:
        return self.conductor

    def wait_until(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        """`probe()` once it is truthy; fail after `timeout` seconds of this backend's time."""
        deadline = self.now() + timedelta(seconds=timeout)
        while not (found := probe()):
            if self.now() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s")
            self.step(self.interval)
        return found

    def poll(self, task_type: str, worker_id: str = "contract", timeout: float = 10) -> TaskRun:
        return self.wait_until(
            lambda: self.queue.poll_task(task_type, worker_id), timeout, f"{task_type} task"
        )

    def status_of(self, workflow_id: str, *wanted: str, timeout: float = 10) -> WorkflowRun:
        """The workflow once its status is one of `wanted`."""

        def probe() -> WorkflowRun | None:
            run = self.conductor.get_workflow(workflow_id)
            return run if run.status in wanted else None

        return self.wait_until(probe, timeout, f"workflow in {wanted}")

    def since(self, moment: datetime) -> float:
        return (self.now() - moment).total_seconds()


@pytest.fixture(
    params=[
        pytest.param("twin", id="twin"),
        pytest.param("real", id="real", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "twin":
        twin = ConductorTwin()
        yield Backend("twin", twin, twin.clock, twin.advance, interval=0.1)
        return
    client = ConductorClient(str(request.getfixturevalue("conductor_url")))
    try:
        yield Backend("real", client, lambda: datetime.now(UTC), time.sleep, interval=0.05)
    finally:
        client.close()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def task_def(name: str, **overrides: Any) -> JsonObject:
    """A test task: no retries, short timeouts, unless told otherwise."""
    base: JsonObject = {
        "name": name,
        "retryCount": 0,
        "retryLogic": "FIXED",
        "retryDelaySeconds": 0,
        "timeoutSeconds": 60,
        "responseTimeoutSeconds": 30,
        "timeoutPolicy": "TIME_OUT_WF",
        "ownerEmail": OWNER,
    }
    return {**base, **overrides}


def linear(
    name: str,
    task_names: Sequence[str],
    *,
    inputs: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
    **extra: Any,
) -> JsonObject:
    """A workflow of SIMPLE tasks referenced as t0, t1, ... each given `inputs`."""
    return {
        "name": name,
        "version": 1,
        "schemaVersion": 2,
        "ownerEmail": OWNER,
        "tasks": [
            {
                "name": task,
                "taskReferenceName": f"t{i}",
                "type": "SIMPLE",
                "inputParameters": dict(inputs or {"x": "${workflow.input.x}"}),
            }
            for i, task in enumerate(task_names)
        ],
        "outputParameters": dict(output or {"out": "${t0.output.v}"}),
        "restartable": True,
        "timeoutPolicy": "TIME_OUT_WF",
        "timeoutSeconds": 0,
        **extra,
    }


@dataclass(frozen=True)
class Flow:
    """A registered test workflow and its task types."""

    workflow: str
    tasks: tuple[str, ...]  # its SIMPLE tasks' types, in order
    correlation_id: str
    version: int = 1

    def start(self, backend: Backend, **input: Any) -> str:
        return backend.conductor.start_workflow(
            self.workflow, input=input, correlation_id=self.correlation_id, version=self.version
        )


def register_flow(
    backend: Backend,
    task_count: int = 1,
    *,
    task_overrides: Mapping[str, Any] | None = None,
    **workflow_extra: Any,
) -> Flow:
    """Fresh task defs and a linear workflow over them, under unique names."""
    tasks = tuple(unique(f"ct{i}") for i in range(task_count))
    backend.conductor.create_task_defs([task_def(t, **(task_overrides or {})) for t in tasks])
    workflow = unique("cwf")
    backend.conductor.put_workflow_defs([linear(workflow, tasks, **workflow_extra)])
    return Flow(workflow, tasks, unique("corr"))


def shipped_shape(workflow: str) -> tuple[JsonObject, list[JsonObject]]:
    """Backtor's shipped `workflow` and its SIMPLE tasks' definitions, verbatim but for
    unique workflow and task names (not registered).

    The shipped task types (`backup`, `remove`, ...) may be polled by other tests' workers on
    the shared server; the renamed copy keeps every input and output expression as shipped,
    and its system tasks (the start fence) as they are: they have no queue.
    """
    shipped = copy.deepcopy(DEFINITIONS.workflow_defs[workflow])
    suffix = uuid.uuid4().hex[:10]
    renamed: dict[str, str] = {}
    for task in shipped["tasks"]:
        if task.get("type", "SIMPLE") != "SIMPLE":
            continue
        renamed[task["name"]] = f"{task['name']}_{suffix}"
        task["name"] = renamed[task["name"]]
    shipped["name"] = f"{workflow}_{suffix}"
    return shipped, [{**DEFINITIONS.task_defs[old], "name": new} for old, new in renamed.items()]


def register_shipped_shape(backend: Backend, workflow: str) -> Flow:
    """`shipped_shape(workflow)`, registered."""
    shipped, task_defs = shipped_shape(workflow)
    backend.conductor.create_task_defs(task_defs)
    backend.conductor.put_workflow_defs([shipped])
    return Flow(
        shipped["name"],
        tuple(d["name"] for d in task_defs),
        unique("spec"),
        version=int(shipped["version"]),
    )


def create_backup_shape() -> tuple[JsonObject, list[JsonObject]]:
    """`shipped_shape("create_backup")`."""
    return shipped_shape("create_backup")


def register_create_backup_shape(backend: Backend) -> Flow:
    """`create_backup_shape()`, registered."""
    return register_shipped_shape(backend, "create_backup")
