"""The start fences of create_backup and remove_backup (docs/scheduling.md, "The start
fence"), on the twin and the server.

A start carries `startBy` (epoch ms). Conductor stamps the moment it received the start (the
scheduledTime of `start_received`, a NOOP run in the start call) and a jq program compares
it: a start received after its startBy ends TERMINATED by a TERMINATE task before the storage
task (`backup`, `remove`) is ever scheduled. No startBy, no fence. A run once admitted
records it in a workflow variable, which a restart keeps: restarting it is not fenced again;
a retry re-runs the failed task only, never the fence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowRun, WorkflowStatus, to_epoch_ms
from backtor.conductor.registration import Definitions, register_definitions
from backtor.conductor.twin import ConductorTwin
from backtor.core.errors import ConductorRefused
from tests.contract.conftest import Backend, Flow, register_shipped_shape, shipped_shape, unique

FENCED = "start fenced: "  # how the reason of a fenced run begins
FENCE = ["start_received", "start_fence", "start_gate"]
LATE = [*FENCE, "start_late"]


@dataclass(frozen=True)
class Fenced:
    """One shipped workflow with a start fence: how a test starts it and finishes it."""

    workflow: str
    storage: str  # the reference of its storage worker's task, the one the fence holds off
    recording: str  # the reference of Backtor's task after it
    start_input: dict[str, Any]
    storage_input: dict[str, Any]  # the storage task's input, resolved from start_input
    storage_output: dict[str, Any]
    done_output: dict[str, Any]  # the workflow's output once both tasks completed
    nothing: str  # how the fenced reason ends: what the run did not do

    @property
    def admitted(self) -> list[str]:
        return [*FENCE, "start_admit", self.storage]


BACKUP_INPUT = {"backupName": "www", "workerConfig": "{}", "timeoutSeconds": 60}
REMOVE_INPUT = {"backupName": "www", "dataId": "www/d-1", "workerConfig": "{}"}
WORKFLOWS = [
    Fenced(
        "create_backup",
        "backup",
        "apply_retention",
        {**BACKUP_INPUT, "scheduledTime": "2030-01-01T00:00:00Z", "manual": False, "fireId": 7},
        BACKUP_INPUT,
        {"dataId": "d-1", "dataSizeMB": 1.5},
        {"dataId": "d-1", "dataSizeMB": 1.5, "backupId": 3, "removals": None},
        "so this run takes no backup",
    ),
    Fenced(
        "remove_backup",
        "remove",
        "record_removal",
        {**REMOVE_INPUT, "backupId": 3},
        REMOVE_INPUT,
        {},
        {"backupId": 3, "dataId": "www/d-1"},
        "so this run removes nothing",
    ),
]


@pytest.fixture(params=WORKFLOWS, ids=[w.workflow for w in WORKFLOWS])
def fenced(request: pytest.FixtureRequest) -> Fenced:
    return request.param  # type: ignore[no-any-return]


def _register(backend: Backend, fenced: Fenced) -> Flow:
    return register_shipped_shape(backend, fenced.workflow)


def _start(backend: Backend, flow: Flow, fenced: Fenced, **extra: Any) -> str:
    return flow.start(backend, **fenced.start_input, **extra)


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


def _finish(backend: Backend, flow: Flow, fenced: Fenced, workflow_id: str) -> WorkflowRun:
    """The storage worker's task, then Backtor's, COMPLETED: the run COMPLETED."""
    storage_type, recording_type = flow.tasks
    storage = backend.poll(storage_type)
    assert storage.workflow_id == workflow_id
    backend.queue.update_task(storage, "COMPLETED", fenced.storage_output)
    backend.queue.update_task(backend.poll(recording_type), "COMPLETED", {"backupId": 3})
    return backend.status_of(workflow_id, WorkflowStatus.COMPLETED)


def test_a_start_received_after_its_start_by_is_fenced(backend: Backend, fenced: Fenced) -> None:
    flow = _register(backend, fenced)
    start_by = _now_ms(backend) - 1000
    workflow_id = _start(backend, flow, fenced, startBy=start_by)

    run = backend.conductor.get_workflow(workflow_id)  # fenced within the start call
    assert run.status == WorkflowStatus.TERMINATED and _refs(run) == LATE
    assert all(t.status == TaskStatus.COMPLETED for t in run.tasks)
    received = _received(run)
    assert received > start_by
    assert _verdict(run) == {"verdict": "late", "admittedAt": None}
    assert run.reason == (
        f"{FENCED}Conductor received this start at {received}, after its startBy {start_by} "
        f"(epoch ms): the claim it was sent under had lapsed, {fenced.nothing}"
    )
    assert dict(run.output) == {"fenced": True, "receivedAt": received, "startBy": start_by}
    assert run.fenced and run.end_time is not None
    assert dict(run.input) == {**fenced.start_input, "startBy": start_by}
    assert backend.queue.poll_task(flow.tasks[0], "storage") is None  # no storage task, ever

    with pytest.raises(ConductorRefused) as retry:  # nothing failed: nothing to retry
        backend.conductor.retry_workflow(workflow_id)
    assert retry.value.status == 409
    backend.conductor.restart_workflow(workflow_id)  # a restart meets the fence again
    again = backend.conductor.get_workflow(workflow_id)
    assert again.status == WorkflowStatus.TERMINATED and _refs(again) == LATE
    assert again.reason is not None and again.reason.startswith(FENCED)
    assert _received(again) >= received
    assert backend.queue.poll_task(flow.tasks[0], "storage") is None


def test_a_start_received_before_its_start_by_runs_the_storage_task(
    backend: Backend, fenced: Fenced
) -> None:
    flow = _register(backend, fenced)
    workflow_id = _start(backend, flow, fenced, startBy=_now_ms(backend) + 60_000)

    run = backend.conductor.get_workflow(workflow_id)
    assert run.status == WorkflowStatus.RUNNING and _refs(run) == fenced.admitted
    assert _verdict(run) == {"verdict": "admitted", "admittedAt": _received(run)}
    storage = _task(run, fenced.storage)
    assert storage.status == TaskStatus.SCHEDULED and dict(storage.input) == fenced.storage_input
    done = _finish(backend, flow, fenced, workflow_id)
    assert _refs(done) == [*fenced.admitted, fenced.recording]
    assert dict(done.output) == fenced.done_output
    assert done.reason is None and not done.fenced


@pytest.mark.parametrize("given", [{}, {"startBy": None}], ids=["absent", "null"])
def test_a_start_without_start_by_is_not_fenced(
    backend: Backend, fenced: Fenced, given: dict[str, Any]
) -> None:
    flow = _register(backend, fenced)
    workflow_id = _start(backend, flow, fenced, **given)
    run = backend.conductor.get_workflow(workflow_id)
    assert run.status == WorkflowStatus.RUNNING and _refs(run) == fenced.admitted
    assert _verdict(run) == {"verdict": "unfenced", "admittedAt": _received(run)}
    _finish(backend, flow, fenced, workflow_id)


def test_retry_and_restart_of_an_admitted_run_are_not_fenced(
    backend: Backend, fenced: Fenced
) -> None:
    """An operator's retry or restart from Conductor's UI, after startBy has passed."""
    flow = _register(backend, fenced)
    storage_type, _ = flow.tasks
    start_by = _now_ms(backend) + 3000
    workflow_id = _start(backend, flow, fenced, startBy=start_by)
    first = backend.conductor.get_workflow(workflow_id)
    assert _refs(first) == fenced.admitted
    admitted_at = _received(first)
    backend.queue.update_task(backend.poll(storage_type), "FAILED_WITH_TERMINAL_ERROR", reason="x")
    backend.status_of(workflow_id, WorkflowStatus.FAILED)
    backend.wait_until(lambda: _now_ms(backend) > start_by + 200, 10, "startBy passed")

    backend.conductor.retry_workflow(workflow_id)  # the failed task only: no fence
    retried = backend.conductor.get_workflow(workflow_id)
    assert retried.status == WorkflowStatus.RUNNING
    assert _refs(retried) == [*fenced.admitted, fenced.storage]
    assert retried.tasks[-1].status == TaskStatus.SCHEDULED and retried.tasks[-1].retry_count == 1
    _finish(backend, flow, fenced, workflow_id)

    backend.conductor.restart_workflow(workflow_id)  # every task again: the fence admits it
    restarted = backend.conductor.get_workflow(workflow_id)
    assert restarted.status == WorkflowStatus.RUNNING and _refs(restarted) == fenced.admitted
    assert _received(restarted) > start_by
    assert _verdict(restarted) == {"verdict": "readmitted", "admittedAt": admitted_at}
    _finish(backend, flow, fenced, workflow_id)


def test_registration_adds_the_fenced_version_beside_an_older_one(
    backend: Backend, fenced: Fenced
) -> None:
    """A Conductor that has the unfenced v1 (of create_backup, of remove_backup): registration
    adds the shipped version beside it and leaves v1 as it was (runs started under it, and
    their restarts, keep it); Backtor starts the shipped version by its number."""
    shipped, task_defs = shipped_shape(fenced.workflow)
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
    assert [t["taskReferenceName"] for t in kept["tasks"]] == [fenced.storage, fenced.recording]
    again = register_definitions(backend.conductor, Definitions({}, {name: shipped}))
    assert (again.created, again.updated) == ([], [])

    old = backend.conductor.start_workflow(
        name, input={"startBy": 0}, correlation_id=unique("spec"), version=1
    )
    assert _refs(backend.conductor.get_workflow(old)) == [fenced.storage]  # no fence in v1
    new = backend.conductor.start_workflow(
        name, input={"startBy": 0}, correlation_id=unique("spec"), version=version
    )
    assert backend.conductor.get_workflow(new).status == WorkflowStatus.TERMINATED
    backend.conductor.terminate_workflow(old, "contract: done")


@pytest.mark.parametrize("workflow", [w.workflow for w in WORKFLOWS])
def test_the_twin_refuses_a_fence_it_does_not_model(workflow: str) -> None:
    """The twin runs the fence's jq as Python: a changed program must change the twin too."""
    shipped, _ = shipped_shape(workflow)
    [fence] = [t for t in shipped["tasks"] if t["taskReferenceName"] == "start_fence"]
    fence["inputParameters"]["queryExpression"] += " | ."
    with pytest.raises(NotImplementedError, match="jq of start_fence"):
        ConductorTwin().put_workflow_defs([shipped])
