"""The task queue: what a worker sees, and how results move a workflow on."""

from __future__ import annotations

import pytest

from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowStatus
from backtor.core.errors import ConductorNotFound
from tests.contract.conftest import (
    Backend,
    linear,
    register_create_backup_shape,
    register_flow,
    task_def,
    unique,
)

SCHEDULED, IN_PROGRESS = TaskStatus.SCHEDULED, TaskStatus.IN_PROGRESS
# A real server's queue may hand a delayed task out a little early or late.
SLACK = 0.3


def test_create_backup_shape_resolves_inputs_and_output(backend: Backend) -> None:
    """Backtor's shipped create_backup expressions, through both of its tasks."""
    flow = register_create_backup_shape(backend)
    backup_type, retention_type = flow.tasks
    workflow_id = flow.start(
        backend,
        backupName="www",
        workerConfig='{"kind": "filesystem"}',
        scheduledTime="2030-01-01T00:00:00Z",
        manual=False,
        fireId=7,
    )
    assert backend.queue.poll_task(unique("nobody"), "storage") is None
    backup = backend.poll(backup_type, "storage-1")
    assert (backup.status, backup.poll_count, backup.worker_id) == (IN_PROGRESS, 1, "storage-1")
    assert backup.workflow_id == workflow_id and backup.reference_name == "backup"
    assert backup.start_time is not None and backup.end_time is None
    # a workflow input that was not given resolves to null, its key present
    assert dict(backup.input) == {
        "backupName": "www",
        "workerConfig": '{"kind": "filesystem"}',
        "timeoutSeconds": None,
    }
    assert backend.queue.poll_task(backup_type, "storage-2") is None  # handed out once
    taken = {"dataId": "d-1", "dataSizeMB": 3.5, "checksum": "ab" * 32, "rowCounts": {"t": 3}}
    backend.queue.update_task(backup, "COMPLETED", taken, worker_id="storage-1")

    retention = backend.poll(retention_type, "backtor")
    [done_backup] = [
        t for t in backend.conductor.get_workflow(workflow_id).tasks if t.reference_name == "backup"
    ]
    assert done_backup.status == TaskStatus.COMPLETED
    assert done_backup.start_time is not None and done_backup.end_time is not None
    assert dict(done_backup.output) == taken
    assert dict(retention.input) == {
        "backupName": "www",
        "scheduledTime": "2030-01-01T00:00:00Z",
        "dataId": "d-1",
        "dataSizeMB": 3.5,
        "checksum": "ab" * 32,
        "rowCounts": {"t": 3},
        "backupTaskId": backup.task_id,
        "backupStartTime": int(done_backup.start_time.timestamp() * 1000),
        "backupEndTime": int(done_backup.end_time.timestamp() * 1000),
        "workflowId": workflow_id,
    }
    backend.queue.update_task(
        retention, "COMPLETED", {"backupId": 11, "removals": [4, 5]}, worker_id="backtor"
    )

    run = backend.status_of(workflow_id, WorkflowStatus.COMPLETED)
    assert dict(run.output) == {
        "dataId": "d-1",
        "dataSizeMB": 3.5,
        "backupId": 11,
        "removals": [4, 5],
    }
    assert run.fire_id == 7 and run.reason is None
    assert run.start_time is not None and run.end_time is not None
    assert run.start_time <= done_backup.start_time <= run.end_time
    assert [t.task_type for t in run.tasks_of_type(retention_type)] == [retention_type]
    assert backend.queue.poll_task(backup_type, "storage-1") is None


def test_expressions(backend: Backend) -> None:
    """The expression forms the twin resolves, beyond the ones Backtor ships."""
    first, second, workflow = unique("ct"), unique("ct"), unique("cwf")
    backend.conductor.create_task_defs([task_def(first), task_def(second)])
    definition = linear(workflow, [first, second], output={"lit": 5, "all": "${t0.output}"})
    definition["tasks"][0]["inputParameters"] = {
        "deep": "${workflow.input.d.k}",
        "whole": "${workflow.input.d}",
        "text": "id-${workflow.input.n}-${workflow.input.missing}-${workflow.input.flag}",
        "nested": {"list": ["${workflow.input.n}", 2, None]},
        "corr": "${workflow.correlationId}",
        "type": "${workflow.workflowType}",
    }
    definition["tasks"][1]["inputParameters"] = {
        "status": "${t0.status}",
        "retries": "${t0.retryCount}",
        "polls": "${t0.pollCount}",
        "worker": "${t0.workerId}",
        "ref": "${t0.referenceTaskName}",
        "scheduled": "${t0.scheduledTime}",
        "in": "${t0.input.deep}",
        "missing": "${t0.output.nothing}",
        "input": "${workflow.input}",
    }
    backend.conductor.put_workflow_defs([definition])
    corr = unique("corr")
    given = {"d": {"k": "v"}, "n": 5, "flag": True}
    workflow_id = backend.conductor.start_workflow(
        workflow, input=given, correlation_id=corr, version=1
    )
    task = backend.poll(first, "w-1")
    assert dict(task.input) == {
        "deep": "v",
        "whole": {"k": "v"},
        "text": "id-5-null-true",
        "nested": {"list": [5, 2, None]},
        "corr": corr,
        "type": workflow,
    }
    backend.queue.update_task(task, "COMPLETED", {"a": [1, {"b": 2}]}, worker_id="w-1")
    later = backend.poll(second)
    assert task.scheduled_time is not None
    assert dict(later.input) == {
        "status": "COMPLETED",
        "retries": 0,
        "polls": 1,
        "worker": "w-1",
        "ref": "t0",
        "scheduled": int(task.scheduled_time.timestamp() * 1000),
        "in": "v",
        "missing": None,
        "input": given,
    }
    backend.queue.update_task(later, "COMPLETED", {})
    run = backend.status_of(workflow_id, WorkflowStatus.COMPLETED)
    assert dict(run.output) == {"lit": 5, "all": {"a": [1, {"b": 2}]}}


def test_poll_hands_out_the_oldest_first(backend: Backend) -> None:
    flow = register_flow(backend)
    first, second = flow.start(backend, x=1), flow.start(backend, x=2)
    assert backend.poll(flow.tasks[0]).workflow_id == first
    assert backend.poll(flow.tasks[0]).workflow_id == second


def test_failed_task_is_retried_per_its_definition(backend: Backend) -> None:
    flow = register_flow(backend, task_overrides={"retryCount": 1, "retryDelaySeconds": 1})
    workflow_id = flow.start(backend, x=1)
    first = backend.poll(flow.tasks[0])
    backend.queue.update_task(first, "FAILED", {"v": "partial"}, reason="contract: flaky")
    failed_at = backend.now()

    run = backend.conductor.get_workflow(workflow_id)
    assert run.status == WorkflowStatus.RUNNING
    old, retry = run.tasks
    assert (old.status, old.reason, dict(old.output)) == (
        TaskStatus.FAILED,
        "contract: flaky",
        {"v": "partial"},
    )
    assert old.end_time is not None and old.worker_id is None  # the update named no worker
    assert retry.task_id != first.task_id and retry.status == SCHEDULED
    assert (retry.retry_count, retry.callback_after_seconds) == (1, 1)
    assert retry.reason == "contract: flaky"  # the server copies the reason onto the retry
    assert dict(retry.input) == {"x": 1}
    assert backend.queue.poll_task(flow.tasks[0], "contract") is None  # the retry delay

    second = backend.poll(flow.tasks[0])
    assert backend.since(failed_at) >= 1 - SLACK
    assert (second.task_id, second.retry_count, second.callback_after_seconds) == (
        retry.task_id,
        1,
        0,
    )
    backend.queue.update_task(second, "FAILED", {"v": "again"}, reason="contract: broken")
    run = backend.status_of(workflow_id, WorkflowStatus.FAILED)
    assert run.reason == (
        f"Task {second.task_id} failed with status: FAILED and reason: 'contract: broken'"
    )
    assert dict(run.output) == {"out": "again"}  # resolved from the last attempt
    assert run.end_time is not None and len(run.tasks) == 2


def test_exponential_backoff(backend: Backend) -> None:
    overrides = {"retryCount": 2, "retryDelaySeconds": 1, "retryLogic": "EXPONENTIAL_BACKOFF"}
    flow = register_flow(backend, task_overrides=overrides)
    workflow_id = flow.start(backend, x=1)
    task = backend.poll(flow.tasks[0])
    for expected_delay in (1, 2):  # retryDelaySeconds * 2 ** (the failed task's retryCount)
        backend.queue.update_task(task, "FAILED", {}, reason="contract: again")
        failed_at = backend.now()
        assert backend.conductor.get_workflow(workflow_id).tasks[-1].callback_after_seconds == (
            expected_delay
        )
        task = backend.poll(flow.tasks[0], timeout=expected_delay + 5)
        assert backend.since(failed_at) >= expected_delay - SLACK
    backend.queue.update_task(task, "COMPLETED", {"v": 1})
    assert dict(backend.status_of(workflow_id, WorkflowStatus.COMPLETED).output) == {"out": 1}


def test_terminal_error_is_not_retried(backend: Backend) -> None:
    flow = register_flow(backend, 2, task_overrides={"retryCount": 3})
    workflow_id = flow.start(backend, x=1)
    task = backend.poll(flow.tasks[0])
    backend.queue.update_task(task, "FAILED_WITH_TERMINAL_ERROR", {"v": 9}, reason="contract: bad")
    run = backend.status_of(workflow_id, WorkflowStatus.FAILED)
    assert [t.status for t in run.tasks] == [TaskStatus.FAILED_WITH_TERMINAL_ERROR]
    # the server's wording says FAILED, even for a terminal error
    assert (
        run.reason == f"Task {task.task_id} failed with status: FAILED and reason: 'contract: bad'"
    )
    assert dict(run.output) == {"out": 9}
    assert backend.queue.poll_task(flow.tasks[1], "contract") is None


def test_in_progress_with_a_callback(backend: Backend) -> None:
    flow = register_flow(backend)
    workflow_id = flow.start(backend, x=1)
    task = backend.poll(flow.tasks[0], "w-1")
    backend.queue.update_task(
        task, "IN_PROGRESS", {"step": 1}, callback_after_seconds=1, worker_id="w-1"
    )
    held_at = backend.now()
    assert backend.queue.poll_task(flow.tasks[0], "w-2") is None
    [shown] = backend.conductor.get_workflow(workflow_id).tasks
    # while it waits, the server shows the task as SCHEDULED, with its callback
    assert (shown.task_id, shown.status, shown.callback_after_seconds) == (
        task.task_id,
        SCHEDULED,
        1,
    )
    assert (shown.poll_count, dict(shown.output)) == (1, {"step": 1})

    again = backend.poll(flow.tasks[0], "w-2")
    assert backend.since(held_at) >= 1 - SLACK
    assert (again.task_id, again.status, again.poll_count) == (task.task_id, IN_PROGRESS, 2)
    assert (again.callback_after_seconds, again.worker_id) == (0, "w-2")
    assert again.start_time == task.start_time  # the first poll's
    assert dict(again.output) == {"step": 1}

    backend.queue.update_task(again, "IN_PROGRESS", {"step": 2})  # no callback: at once
    third = backend.poll(flow.tasks[0], "w-3", timeout=2)
    assert (third.task_id, third.poll_count) == (task.task_id, 3)
    backend.queue.update_task(third, "COMPLETED", {"v": "done"}, worker_id="w-3")
    run = backend.status_of(workflow_id, WorkflowStatus.COMPLETED)
    assert dict(run.tasks[0].output) == {"v": "done"}  # replaced, not merged
    assert run.tasks[0].worker_id == "w-3"


def test_update_errors(backend: Backend) -> None:
    flow = register_flow(backend)
    workflow_id = flow.start(backend, x=1)
    task = backend.poll(flow.tasks[0])
    stranger = TaskRun(
        task_id=unique("task"), task_type=task.task_type, reference_name="t0", status=IN_PROGRESS
    )
    with pytest.raises(ConductorNotFound) as no_workflow:
        backend.queue.update_task(
            TaskRun(**{**stranger.__dict__, "workflow_id": unique("wf")}), "COMPLETED"
        )
    with pytest.raises(ConductorNotFound) as no_task:
        backend.queue.update_task(
            TaskRun(**{**stranger.__dict__, "workflow_id": workflow_id}), "COMPLETED"
        )
    assert no_workflow.value.status == no_task.value.status == 404
    assert no_task.value.operation == "update_task"
    backend.queue.update_task(task, "COMPLETED", {"v": 1})
    backend.queue.update_task(task, "FAILED", {"v": 2})  # already done: accepted, ignored
    run = backend.status_of(workflow_id, WorkflowStatus.COMPLETED)
    assert dict(run.output) == {"out": 1}


def test_a_running_workflow_keeps_the_task_def_it_started_with(backend: Backend) -> None:
    flow = register_flow(backend)
    workflow_id = flow.start(backend, x=1)
    backend.conductor.update_task_def(task_def(flow.tasks[0], retryCount=2))
    backend.queue.update_task(backend.poll(flow.tasks[0]), "FAILED", {}, reason="contract: no")
    assert backend.status_of(workflow_id, WorkflowStatus.FAILED).reason is not None
    later = flow.start(backend, x=2)  # a new execution takes the new definition
    backend.queue.update_task(backend.poll(flow.tasks[0]), "FAILED", {}, reason="contract: no")
    assert len(backend.conductor.get_workflow(later).tasks) == 2
    backend.conductor.terminate_workflow(later, "contract: done")


def test_a_task_without_definition_gets_the_server_defaults(backend: Backend) -> None:
    task_type, workflow = unique("undefined"), unique("cwf")
    backend.conductor.put_workflow_defs([linear(workflow, [task_type])])
    workflow_id = backend.conductor.start_workflow(
        workflow, input={"x": 1}, correlation_id=unique("corr"), version=1
    )
    task = backend.poll(task_type)
    assert task.response_timeout_seconds == 3600
    backend.queue.update_task(task, "FAILED", {}, reason="contract: once")
    retry = backend.conductor.get_workflow(workflow_id).tasks[-1]
    assert (retry.status, retry.retry_count, retry.callback_after_seconds) == (SCHEDULED, 1, 60)
    assert backend.queue.poll_task(task_type, "contract") is None
    backend.conductor.terminate_workflow(workflow_id, "contract: done")


def test_a_task_held_by_a_worker_that_died_stays_and_another_may_report_it(
    backend: Backend,
) -> None:
    """What Backtor's stall repair (backtor.scheduling.stalls) relies on.

    A polled task whose worker never answers stays IN_PROGRESS, its update time the poll's
    (nothing refreshes it); another worker id may then report it, and the workflow goes on.
    """
    flow = register_flow(backend, 2)
    workflow_id = flow.start(backend, x=1)
    before = backend.now()
    held = backend.poll(flow.tasks[0], "worker-that-dies")
    polled_by = backend.now()

    backend.step(1.5)
    [shown, *_] = backend.conductor.get_workflow(workflow_id).tasks
    assert (shown.status, shown.worker_id) == (IN_PROGRESS, "worker-that-dies")
    assert shown.response_timeout_seconds == 30
    seen = shown.update_time or shown.start_time
    assert seen is not None
    assert before.timestamp() - SLACK <= seen.timestamp() <= polled_by.timestamp() + SLACK

    backend.queue.update_task(held, "COMPLETED", {"v": "repaired"}, worker_id="backtor-repair")
    second = backend.poll(flow.tasks[1], "w-2")
    assert second.workflow_id == workflow_id
    run = backend.conductor.get_workflow(workflow_id)
    assert (run.tasks[0].status, dict(run.tasks[0].output)) == (
        TaskStatus.COMPLETED,
        {"v": "repaired"},
    )


def test_get_task_shows_a_task_canceled_with_its_workflow(backend: Backend) -> None:
    """A storage worker asks this before it keeps a backup: a terminated run wants none."""
    flow = register_flow(backend)
    workflow_id = flow.start(backend, x=1)
    held = backend.poll(flow.tasks[0], "storage")
    shown = backend.queue.get_task(held.task_id)
    assert (shown.task_id, shown.status, shown.workflow_id) == (
        held.task_id,
        IN_PROGRESS,
        workflow_id,
    )
    backend.conductor.terminate_workflow(workflow_id, "an operator changed their mind")
    assert backend.queue.get_task(held.task_id).status is TaskStatus.CANCELED
    with pytest.raises(ConductorNotFound):
        backend.queue.get_task("no-such-task-id")


def test_poll_tasks_hands_out_up_to_count_once_each(backend: Backend) -> None:
    """The batch poll `backtor worker` uses (thread isolation): up to `count`, each once."""
    flow = register_flow(backend)
    started = {flow.start(backend, n=n) for n in range(3)}
    task_type = flow.tasks[0]
    first = backend.wait_until(
        lambda: backend.queue.poll_tasks(task_type, "batch", 2, 100), 10, "a batch"
    )
    polled = list(first)
    while len(polled) < 3:
        polled += backend.wait_until(
            lambda: backend.queue.poll_tasks(task_type, "batch", 2, 100), 10, "the rest"
        )
    assert 1 <= len(first) <= 2
    assert len(polled) == 3 and {t.workflow_id for t in polled} == started
    assert all(t.status == IN_PROGRESS and t.worker_id == "batch" for t in polled)
    assert backend.queue.poll_tasks(task_type, "batch", 2) == []  # each handed out once
    assert backend.queue.poll_tasks(unique("nobody"), "batch", 1) == []
