"""create_backup's start fence (docs/scheduling.md, "The start fence"), on the twin and the server.

A start carries `startBy` (epoch ms). Conductor stamps the moment it received the start (the
scheduledTime of `start_received`, a NOOP run in the start call) and a jq program compares
it: a start received after its startBy ends TERMINATED by a TERMINATE task before `backup`
is ever scheduled. No startBy, no fence. A run once admitted records it in a workflow
variable, which a restart keeps: restarting it is not fenced again; a retry re-runs the
failed task only, never the fence.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowRun, WorkflowStatus, to_epoch_ms
from backtor.conductor.registration import Definitions, register_definitions
from backtor.conductor.twin import ConductorTwin
from backtor.core.errors import ConductorRefused
from tests.contract.conftest import (
    Backend,
    Flow,
    create_backup_shape,
    register_create_backup_shape,
    unique,
)

FENCED = "start fenced: "  # how the reason of a fenced run begins
FENCE = ["start_received", "start_fence", "start_gate"]
ADMITTED = [*FENCE, "start_admit", "backup"]
LATE = [*FENCE, "start_late"]
BACKUP_INPUT = {"backupName": "www", "workerConfig": "{}", "timeoutSeconds": 60}


def _start(backend: Backend, flow: Flow, **extra: Any) -> str:
    return flow.start(
        backend,
        **BACKUP_INPUT,
        scheduledTime="2030-01-01T00:00:00Z",
        manual=False,
        fireId=7,
        **extra,
    )


def _now_ms(backend: Backend) -> int:
    return to_epoch_ms(backend.now())


def _refs(run: WorkflowRun) -> list[str]:
    return [t.reference_name for t in run.tasks]


def _task(run: WorkflowRun, ref: str) -> TaskRun:
    [task] = [t for t in run.tasks if t.reference_name == ref]
    return task


def _received(run: WorkflowRun) -> int:
    moment = _task(run, "start_received").scheduled_time
    assert moment is not None
    return to_epoch_ms(moment)


def _verdict(run: WorkflowRun) -> dict[str, Any]:
    return dict(_task(run, "start_fence").output["result"])


def _take_backup(backend: Backend, flow: Flow, workflow_id: str) -> WorkflowRun:
    backup_type, retention_type = flow.tasks
    backup = backend.poll(backup_type)
    assert backup.workflow_id == workflow_id
    backend.queue.update_task(backup, "COMPLETED", {"dataId": "d-1", "dataSizeMB": 1.5})
    backend.queue.update_task(backend.poll(retention_type), "COMPLETED", {"backupId": 3})
    return backend.status_of(workflow_id, WorkflowStatus.COMPLETED)


def test_a_start_received_after_its_start_by_is_fenced(backend: Backend) -> None:
    flow = register_create_backup_shape(backend)
    start_by = _now_ms(backend) - 1000
    workflow_id = _start(backend, flow, startBy=start_by)

    run = backend.conductor.get_workflow(workflow_id)  # fenced within the start call
    assert run.status == WorkflowStatus.TERMINATED and _refs(run) == LATE
    assert all(t.status == TaskStatus.COMPLETED for t in run.tasks)
    received = _received(run)
    assert received > start_by
    assert _verdict(run) == {"verdict": "late", "admittedAt": None}
    assert run.reason == (
        f"{FENCED}Conductor received this start at {received}, after its startBy {start_by} "
        "(epoch ms): the claim it was sent under had lapsed, so this run takes no backup"
    )
    assert dict(run.output) == {"fenced": True, "receivedAt": received, "startBy": start_by}
    assert run.end_time is not None and run.fire_id == 7
    assert backend.queue.poll_task(flow.tasks[0], "storage") is None  # no backup, ever

    with pytest.raises(ConductorRefused) as retry:  # nothing failed: nothing to retry
        backend.conductor.retry_workflow(workflow_id)
    assert retry.value.status == 409
    backend.conductor.restart_workflow(workflow_id)  # a restart meets the fence again
    again = backend.conductor.get_workflow(workflow_id)
    assert again.status == WorkflowStatus.TERMINATED and _refs(again) == LATE
    assert again.reason is not None and again.reason.startswith(FENCED)
    assert _received(again) >= received
    assert backend.queue.poll_task(flow.tasks[0], "storage") is None


def test_a_start_received_before_its_start_by_takes_the_backup(backend: Backend) -> None:
    flow = register_create_backup_shape(backend)
    workflow_id = _start(backend, flow, startBy=_now_ms(backend) + 60_000)

    run = backend.conductor.get_workflow(workflow_id)
    assert run.status == WorkflowStatus.RUNNING and _refs(run) == ADMITTED
    assert _verdict(run) == {"verdict": "admitted", "admittedAt": _received(run)}
    backup = _task(run, "backup")
    assert backup.status == TaskStatus.SCHEDULED and dict(backup.input) == BACKUP_INPUT
    done = _take_backup(backend, flow, workflow_id)
    assert dict(done.output) == {
        "dataId": "d-1",
        "dataSizeMB": 1.5,
        "backupId": 3,
        "removals": None,
    }
    assert done.reason is None


@pytest.mark.parametrize("given", [{}, {"startBy": None}], ids=["absent", "null"])
def test_a_start_without_start_by_is_not_fenced(backend: Backend, given: dict[str, Any]) -> None:
    flow = register_create_backup_shape(backend)
    workflow_id = _start(backend, flow, **given)
    run = backend.conductor.get_workflow(workflow_id)
    assert run.status == WorkflowStatus.RUNNING and _refs(run) == ADMITTED
    assert _verdict(run) == {"verdict": "unfenced", "admittedAt": _received(run)}
    _take_backup(backend, flow, workflow_id)


def test_retry_and_restart_of_an_admitted_run_are_not_fenced(backend: Backend) -> None:
    """An operator's retry or restart from Conductor's UI, after startBy has passed."""
    flow = register_create_backup_shape(backend)
    backup_type, _ = flow.tasks
    start_by = _now_ms(backend) + 3000
    workflow_id = _start(backend, flow, startBy=start_by)
    first = backend.conductor.get_workflow(workflow_id)
    assert _refs(first) == ADMITTED
    admitted_at = _received(first)
    backend.queue.update_task(backend.poll(backup_type), "FAILED_WITH_TERMINAL_ERROR", reason="x")
    backend.status_of(workflow_id, WorkflowStatus.FAILED)
    backend.wait_until(lambda: _now_ms(backend) > start_by + 200, 10, "startBy passed")

    backend.conductor.retry_workflow(workflow_id)  # the failed task only: no fence
    retried = backend.conductor.get_workflow(workflow_id)
    assert retried.status == WorkflowStatus.RUNNING
    assert _refs(retried) == [*ADMITTED, "backup"]
    assert retried.tasks[-1].status == TaskStatus.SCHEDULED and retried.tasks[-1].retry_count == 1
    _take_backup(backend, flow, workflow_id)

    backend.conductor.restart_workflow(workflow_id)  # every task again: the fence admits it
    restarted = backend.conductor.get_workflow(workflow_id)
    assert restarted.status == WorkflowStatus.RUNNING and _refs(restarted) == ADMITTED
    assert _received(restarted) > start_by
    assert _verdict(restarted) == {"verdict": "readmitted", "admittedAt": admitted_at}
    _take_backup(backend, flow, workflow_id)


def test_registration_adds_the_fenced_version_beside_an_older_one(backend: Backend) -> None:
    """A Conductor that has the unfenced create_backup v1: registration adds the shipped
    version beside it and leaves v1 as it was (runs started under it, and their restarts,
    keep it); Backtor starts the shipped version by its number."""
    shipped, task_defs = create_backup_shape()
    name, version = shipped["name"], int(shipped["version"])
    older = {
        **copy.deepcopy(shipped),
        "version": 1,
        "tasks": [t for t in shipped["tasks"] if t["type"] == "SIMPLE"],
    }
    backend.conductor.create_task_defs(task_defs)
    assert register_definitions(backend.conductor, Definitions({}, {name: older})).created == [
        f"workflow {name} v1"
    ]

    report = register_definitions(backend.conductor, Definitions({}, {name: shipped}))
    assert version > 1 and (report.created, report.updated) == ([f"workflow {name} v{version}"], [])
    kept = backend.conductor.get_workflow_def(name, 1)
    assert kept is not None
    assert [t["taskReferenceName"] for t in kept["tasks"]] == ["backup", "apply_retention"]
    again = register_definitions(backend.conductor, Definitions({}, {name: shipped}))
    assert (again.created, again.updated) == ([], [])

    old = backend.conductor.start_workflow(
        name, input={"startBy": 0}, correlation_id=unique("spec"), version=1
    )
    assert _refs(backend.conductor.get_workflow(old)) == ["backup"]  # no fence in v1
    new = backend.conductor.start_workflow(
        name, input={"startBy": 0}, correlation_id=unique("spec"), version=version
    )
    assert backend.conductor.get_workflow(new).status == WorkflowStatus.TERMINATED
    backend.conductor.terminate_workflow(old, "contract: done")


def test_the_twin_refuses_a_fence_it_does_not_model() -> None:
    """The twin runs the fence's jq as Python: a changed program must change the twin too."""
    shipped, _ = create_backup_shape()
    [fence] = [t for t in shipped["tasks"] if t["taskReferenceName"] == "start_fence"]
    fence["inputParameters"]["queryExpression"] += " | ."
    with pytest.raises(NotImplementedError, match="jq of start_fence"):
        ConductorTwin().put_workflow_defs([shipped])
