"""Executions: start, look up, terminate, retry, restart, pause, time out."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backtor.conductor.payloads import TaskStatus, WorkflowStatus
from backtor.core.errors import ConductorNotFound, ConductorRefused
from tests.contract.conftest import Backend, linear, register_flow, task_def, unique

RUNNING, COMPLETED, FAILED = WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED, WorkflowStatus.FAILED
TERMINATED, TIMED_OUT = WorkflowStatus.TERMINATED, WorkflowStatus.TIMED_OUT


def test_is_healthy(backend: Backend) -> None:
    assert backend.conductor.is_healthy()


def test_start_picks_the_latest_version_and_refuses_unknown_ones(backend: Backend) -> None:
    conductor = backend.conductor
    task, workflow = unique("ct"), unique("cwf")
    conductor.create_task_defs([task_def(task)])
    conductor.put_workflow_defs([{**linear(workflow, [task]), "version": v} for v in (1, 2)])
    latest = conductor.start_workflow(workflow, input={}, correlation_id=unique("corr"))
    assert conductor.get_workflow(latest).version == 2
    pinned = conductor.start_workflow(workflow, input={}, correlation_id="c", version=1)
    assert conductor.get_workflow(pinned).version == 1
    with pytest.raises(ConductorNotFound) as unknown_version:
        conductor.start_workflow(workflow, input={}, correlation_id="c", version=3)
    with pytest.raises(ConductorNotFound) as unknown_name:
        conductor.start_workflow(unique("nowhere"), input={}, correlation_id="c")
    assert unknown_version.value.status == unknown_name.value.status == 404
    assert unknown_name.value.operation == "start_workflow"
    for workflow_id in (latest, pinned):
        conductor.terminate_workflow(workflow_id, "contract: done")


def test_get_with_and_without_tasks(backend: Backend) -> None:
    flow = register_flow(backend)
    started = backend.now()
    workflow_id = flow.start(backend, x=1, fireId=42)
    run = backend.conductor.get_workflow(workflow_id)
    assert (run.workflow_id, run.name, run.status, run.version) == (
        workflow_id,
        flow.workflow,
        RUNNING,
        1,
    )
    assert run.correlation_id == flow.correlation_id
    assert run.fire_id == 42 and dict(run.input) == {"x": 1, "fireId": 42}
    assert run.start_time is not None and run.end_time is None and run.reason is None
    assert abs((run.start_time - started).total_seconds()) < 5
    [task] = run.tasks
    assert (task.task_type, task.reference_name, task.status) == (flow.tasks[0], "t0", "SCHEDULED")
    assert task.workflow_id == workflow_id and dict(task.input) == {"x": 1}
    assert task.start_time is None and task.poll_count == 0
    assert backend.conductor.get_workflow(workflow_id, include_tasks=False).tasks == ()
    with pytest.raises(ConductorNotFound) as missing:
        backend.conductor.get_workflow(unique("no-such-id"))
    assert (missing.value.status, missing.value.operation) == (404, "get_workflow")
    backend.conductor.terminate_workflow(workflow_id, "contract: done")


def test_correlated_lookup_open_and_closed(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend)
    done = flow.start(backend, x=1, fireId=1)
    running = flow.start(backend, x=2, fireId=2)
    conductor.terminate_workflow(done, "contract: closed")
    nobody = unique("corr")

    open_only = conductor.workflows_by_correlation(
        flow.workflow, [flow.correlation_id, nobody], include_closed=False
    )
    assert open_only[nobody] == []
    assert [(w.workflow_id, w.fire_id) for w in open_only[flow.correlation_id]] == [(running, 2)]
    every = conductor.workflows_by_correlation(
        flow.workflow, [flow.correlation_id], include_closed=True
    )
    found = {w.workflow_id: w for w in every[flow.correlation_id]}
    assert set(found) == {done, running}
    assert found[done].status == TERMINATED and found[done].fire_id == 1
    assert found[done].reason == "contract: closed" and found[done].end_time is not None
    assert all(w.tasks == () for w in found.values())  # without their tasks
    assert conductor.workflows_by_correlation(flow.workflow, [], include_closed=True) == {}
    other = conductor.workflows_by_correlation(
        unique("other"), [flow.correlation_id], include_closed=True
    )
    assert other == {flow.correlation_id: []}
    conductor.terminate_workflow(running, "contract: done")


def test_terminate(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend, 2)
    workflow_id = flow.start(backend, x=1)
    task = backend.poll(flow.tasks[0])
    conductor.terminate_workflow(workflow_id, "contract: stop")
    run = conductor.get_workflow(workflow_id)
    assert (run.status, run.reason) == (TERMINATED, "contract: stop")
    assert run.end_time is not None
    assert [t.status for t in run.tasks] == [TaskStatus.CANCELED]
    assert run.tasks[0].end_time is not None
    assert dict(run.output) == {"out": None}  # output parameters resolved at the end

    backend.queue.update_task(task, "COMPLETED", {"v": 1})  # too late: accepted, ignored
    assert conductor.get_workflow(workflow_id).tasks[0].status == TaskStatus.CANCELED
    assert backend.queue.poll_task(flow.tasks[1], "contract") is None

    conductor.terminate_workflow(workflow_id, "contract: again")  # already terminated: no-op
    assert conductor.get_workflow(workflow_id).reason == "contract: stop"
    with pytest.raises(ConductorNotFound):
        conductor.terminate_workflow(unique("no-such-id"), "x")


def test_terminate_finished_workflows(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend)
    completed, failed = flow.start(backend, x=1), flow.start(backend, x=2)
    for _ in range(2):
        task = backend.poll(flow.tasks[0])
        if task.workflow_id == completed:
            backend.queue.update_task(task, "COMPLETED", {"v": 1})
        else:
            backend.queue.update_task(task, "FAILED", {}, reason="contract: broken")
    backend.status_of(completed, COMPLETED)
    assert backend.status_of(failed, FAILED).end_time is not None

    with pytest.raises(ConductorRefused) as refused:
        conductor.terminate_workflow(completed, "contract: too late")
    assert (type(refused.value), refused.value.status) == (ConductorRefused, 409)
    assert conductor.get_workflow(completed).status == COMPLETED
    conductor.terminate_workflow(failed, "contract: cleaned up")  # FAILED becomes TERMINATED
    run = conductor.get_workflow(failed)
    assert (run.status, run.reason) == (TERMINATED, "contract: cleaned up")


def test_retry_a_failed_workflow(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend, 2)
    workflow_id = flow.start(backend, x=1)
    first = backend.poll(flow.tasks[0])
    backend.queue.update_task(first, "FAILED", {"v": 0}, reason="contract: disk full")
    failed = backend.status_of(workflow_id, FAILED)
    assert failed.reason == (
        f"Task {first.task_id} failed with status: FAILED and reason: 'contract: disk full'"
    )
    with pytest.raises(ConductorNotFound):
        conductor.retry_workflow(unique("no-such-id"))

    conductor.retry_workflow(workflow_id)
    run = conductor.get_workflow(workflow_id)
    assert run.status == RUNNING and run.reason is None
    assert run.end_time == failed.end_time  # kept from the failure while it runs again
    old, new = run.tasks
    assert (old.task_id, old.status) == (first.task_id, TaskStatus.FAILED)
    assert new.task_id != first.task_id and new.status == TaskStatus.SCHEDULED
    assert new.retry_count == 1 and dict(new.input) == {"x": 1}
    with pytest.raises(ConductorNotFound) as running:  # a 404, though it exists
        conductor.retry_workflow(workflow_id)
    assert running.value.status == 404

    again = backend.poll(flow.tasks[0])  # pollable at once: no retry delay
    assert again.task_id == new.task_id
    backend.queue.update_task(again, "COMPLETED", {"v": 1})
    backend.queue.update_task(backend.poll(flow.tasks[1]), "COMPLETED", {})
    done = backend.status_of(workflow_id, COMPLETED)
    assert dict(done.output) == {"out": 1} and done.reason is None
    with pytest.raises(ConductorRefused) as nothing_to_retry:
        conductor.retry_workflow(workflow_id)
    assert (type(nothing_to_retry.value), nothing_to_retry.value.status) == (ConductorRefused, 409)


def test_retry_a_terminated_workflow(backend: Backend) -> None:
    flow = register_flow(backend)
    workflow_id = flow.start(backend, x=1)
    backend.conductor.terminate_workflow(workflow_id, "contract: by hand")
    backend.conductor.retry_workflow(workflow_id)
    run = backend.conductor.get_workflow(workflow_id)
    assert run.status == RUNNING and run.reason is None
    assert [t.status for t in run.tasks] == [TaskStatus.CANCELED, TaskStatus.SCHEDULED]
    task = backend.poll(flow.tasks[0])
    assert task.task_id == run.tasks[1].task_id and task.retry_count == 1
    backend.queue.update_task(task, "COMPLETED", {"v": 2})
    assert dict(backend.status_of(workflow_id, COMPLETED).output) == {"out": 2}


def test_restart(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend)
    workflow_id = flow.start(backend, x=1)
    with pytest.raises(ConductorRefused) as running:
        conductor.restart_workflow(workflow_id)
    assert (type(running.value), running.value.status) == (ConductorRefused, 409)
    first = backend.poll(flow.tasks[0])
    backend.queue.update_task(first, "COMPLETED", {"v": 1})
    done = backend.status_of(workflow_id, COMPLETED)
    assert done.start_time is not None

    conductor.restart_workflow(workflow_id)
    run = conductor.get_workflow(workflow_id)
    assert (run.workflow_id, run.status, run.reason, run.end_time) == (
        workflow_id,
        RUNNING,
        None,
        None,
    )
    assert dict(run.output) == {} and dict(run.input) == {"x": 1}
    assert run.start_time is not None and run.start_time >= done.start_time
    [task] = run.tasks
    assert task.task_id != first.task_id and task.retry_count == 0
    assert task.status == TaskStatus.SCHEDULED and dict(task.input) == {"x": 1}
    backend.queue.update_task(backend.poll(flow.tasks[0]), "COMPLETED", {"v": 2})
    assert dict(backend.status_of(workflow_id, COMPLETED).output) == {"out": 2}
    with pytest.raises(ConductorNotFound):
        conductor.restart_workflow(unique("no-such-id"))


def test_pause_and_resume(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend, 2)
    workflow_id = flow.start(backend, x=1)
    conductor.pause_workflow(workflow_id)
    assert conductor.get_workflow(workflow_id).status == WorkflowStatus.PAUSED
    # the open lookup is RUNNING only: a paused execution is not in it
    lookup = conductor.workflows_by_correlation
    assert lookup(flow.workflow, [flow.correlation_id], include_closed=False) == {
        flow.correlation_id: []
    }
    closed = lookup(flow.workflow, [flow.correlation_id], include_closed=True)
    assert [w.status for w in closed[flow.correlation_id]] == [WorkflowStatus.PAUSED]
    with pytest.raises(ConductorNotFound):  # "still running": a 404
        conductor.retry_workflow(workflow_id)
    with pytest.raises(ConductorRefused) as restart:
        conductor.restart_workflow(workflow_id)
    assert restart.value.status == 409

    task = backend.poll(flow.tasks[0])  # a task queued before the pause is still handed out
    backend.queue.update_task(task, "COMPLETED", {"v": 1})
    assert [t.status for t in conductor.get_workflow(workflow_id).tasks] == ["COMPLETED"]
    assert backend.queue.poll_task(flow.tasks[1], "contract") is None

    conductor.resume_workflow(workflow_id)
    backend.queue.update_task(backend.poll(flow.tasks[1]), "COMPLETED", {})
    backend.status_of(workflow_id, COMPLETED)
    with pytest.raises(ConductorRefused) as not_paused:
        conductor.resume_workflow(workflow_id)
    assert not_paused.value.status == 500
    with pytest.raises(ConductorRefused) as ended:
        conductor.pause_workflow(workflow_id)
    assert ended.value.status == 409

    paused = flow.start(backend, x=2)
    conductor.pause_workflow(paused)
    conductor.terminate_workflow(paused, "contract: paused and stopped")
    assert conductor.get_workflow(paused).status == TERMINATED


def test_workflow_timeout(backend: Backend) -> None:
    conductor = backend.conductor
    flow = register_flow(backend, timeoutSeconds=2, timeoutPolicy="TIME_OUT_WF")
    retried, terminated = flow.start(backend, x=1), flow.start(backend, x=2)
    backend.status_of(terminated, TIMED_OUT, timeout=15)  # the server notices each on its own
    run = backend.status_of(retried, TIMED_OUT, timeout=15)
    assert run.start_time is not None and run.end_time is not None
    assert run.end_time - run.start_time >= timedelta(seconds=2)
    assert run.reason is not None and run.reason.startswith("Workflow timed out after ")
    assert run.reason.endswith(
        "Timeout configured as 2 seconds. Timeout policy configured to TIME_OUT_WF"
    )
    assert [t.status for t in run.tasks] == [TaskStatus.CANCELED]
    assert dict(run.output) == {"out": None}

    conductor.retry_workflow(retried)  # the timeout counts again from the retry
    task = backend.poll(flow.tasks[0], timeout=1)
    assert task.retry_count == 1
    backend.queue.update_task(task, "COMPLETED", {"v": 3})
    assert dict(backend.status_of(retried, COMPLETED).output) == {"out": 3}

    conductor.terminate_workflow(terminated, "contract: timed out, then terminated")
    assert conductor.get_workflow(terminated).status == TERMINATED
