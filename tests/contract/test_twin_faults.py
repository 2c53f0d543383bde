"""The twin's own features: fault injection, its clock, the simulation's helpers (twin only)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from backtor.conductor.payloads import WorkflowStatus
from backtor.conductor.twin import ConductorTwin, FaultKind, ManualClock, Operation
from backtor.core.errors import ConductorRefused, ConductorUnavailable
from tests.contract.conftest import linear, task_def


def _twin(**kwargs: object) -> ConductorTwin:
    twin = ConductorTwin(**kwargs)  # type: ignore[arg-type]
    twin.create_task_defs([task_def("backup"), task_def("apply_retention"), task_def("other")])
    twin.put_workflow_defs([linear("cwf", ["backup", "apply_retention"])])
    return twin


def test_injected_faults_fire_count_times_then_stop() -> None:
    twin = _twin()
    twin.faults.inject(Operation.GET_WORKFLOW, FaultKind.UNAVAILABLE, count=2)
    workflow_id = twin.start_workflow("cwf", input={}, correlation_id="c")  # other calls: fine
    for _ in range(2):
        with pytest.raises(ConductorUnavailable):
            twin.get_workflow(workflow_id)
    assert twin.get_workflow(workflow_id).status == WorkflowStatus.RUNNING
    assert twin.faults.fired == [(Operation.GET_WORKFLOW, FaultKind.UNAVAILABLE)] * 2


def test_failed_calls_change_nothing() -> None:
    twin = _twin()
    for kind in (FaultKind.UNAVAILABLE, FaultKind.THROTTLED, FaultKind.SERVER_ERROR):
        twin.faults.inject(Operation.START_WORKFLOW, kind)
        with pytest.raises((ConductorUnavailable, ConductorRefused)):
            twin.start_workflow("cwf", input={}, correlation_id="c")
    assert twin.workflows() == []


def test_a_start_whose_answer_was_lost_still_started() -> None:
    twin = _twin()
    twin.faults.inject(Operation.START_WORKFLOW, FaultKind.LOST_ANSWER)
    with pytest.raises(ConductorUnavailable):
        twin.start_workflow("cwf", input={"fireId": 3}, correlation_id="spec")
    [run] = twin.workflows_by_correlation("cwf", ["spec"], include_closed=True)["spec"]
    assert run.fire_id == 3 and run.status == WorkflowStatus.RUNNING


def test_a_lost_poll_leaves_the_task_in_progress() -> None:
    """No response timeout is modelled: a task handed to nobody stays IN_PROGRESS."""
    twin = _twin()
    twin.start_workflow("cwf", input={}, correlation_id="c")
    twin.faults.inject(Operation.POLL_TASK, FaultKind.LOST_ANSWER)
    with pytest.raises(ConductorUnavailable):
        twin.poll_task("backup", "w")
    twin.advance(86400)
    assert twin.poll_task("backup", "w") is None
    assert [t.status for t in twin.pending_tasks()] == ["IN_PROGRESS"]


def test_slowness_moves_the_clock() -> None:
    twin = _twin()
    before = twin.clock()
    twin.faults.inject(Operation.START_WORKFLOW, FaultKind.SLOW, delay=3)
    workflow_id = twin.start_workflow("cwf", input={}, correlation_id="c")
    run = twin.get_workflow(workflow_id)
    assert run.start_time == before + timedelta(seconds=3)
    # slower than the client waits: the client gives up after its timeout, the start happened
    twin.faults.inject(Operation.START_WORKFLOW, FaultKind.SLOW, delay=60)
    with pytest.raises(ConductorUnavailable):
        twin.start_workflow("cwf", input={}, correlation_id="c")
    assert twin.clock() == before + timedelta(seconds=3 + twin.client_timeout)
    assert len(twin.workflows()) == 2


def test_slowness_with_an_injected_clock_uses_the_sleep_hook() -> None:
    clock = ManualClock(datetime(2031, 5, 1, tzinfo=UTC))
    slept: list[float] = []
    twin = _twin(clock=clock, sleep=slept.append)
    twin.faults.inject(None, FaultKind.SLOW, delay=2)
    assert twin.is_healthy()
    assert slept == [2]
    with pytest.raises(TypeError):
        twin.advance(1)  # the injected clock is the simulation's to move


def test_faults_at_a_seeded_rate_are_reproducible() -> None:
    def run(seed: int) -> list[bool]:
        twin = _twin(seed=seed)
        twin.faults.set_rate(Operation.GET_TASKDEF, FaultKind.THROTTLED, 0.3)
        outcomes = []
        for _ in range(200):
            try:
                twin.get_task_def("backup")
                outcomes.append(True)
            except ConductorUnavailable:
                outcomes.append(False)
        return outcomes

    first = run(7)
    assert first == run(7) and first != run(8)
    assert 30 < first.count(False) < 90
    twin = _twin()
    twin.faults.set_rate(None, FaultKind.SERVER_ERROR, 1.0)
    twin.faults.set_rate(None, FaultKind.SERVER_ERROR, 0)
    assert twin.get_task_def("backup") is not None


def test_bad_answers_only_where_the_client_reads_one() -> None:
    twin = _twin()
    with pytest.raises(ValueError):
        twin.faults.inject(Operation.TERMINATE_WORKFLOW, FaultKind.BAD_ANSWER)
    twin.faults.set_rate(None, FaultKind.BAD_ANSWER, 1.0)
    workflow_id = "none"
    with pytest.raises(ConductorRefused):
        workflow_id = twin.start_workflow("cwf", input={}, correlation_id="c")
    [run] = twin.workflows()  # the start happened; its answer was garbled
    twin.terminate_workflow(run.workflow_id, "fine")  # its answer is not read: no fault
    assert workflow_id == "none"
    assert not twin.is_healthy()


def test_health_never_raises() -> None:
    twin = _twin()
    for kind in FaultKind:
        if kind is not FaultKind.SLOW:
            twin.faults.inject(Operation.HEALTH, kind)
            assert twin.is_healthy() is False
    assert twin.is_healthy() is True


def test_simulation_helpers() -> None:
    twin = _twin()
    assert twin.next_event_at() is None
    first = twin.start_workflow("cwf", input={}, correlation_id="a")
    second = twin.start_workflow("cwf", input={}, correlation_id="b")
    assert [t.workflow_id for t in twin.pending_tasks({"backup"})] == [first, second]
    assert twin.pending_tasks({"apply_retention"}) == []
    task = twin.poll_task("backup", "w")
    assert task is not None
    twin.update_task(task, "IN_PROGRESS", callback_after_seconds=30)
    assert twin.next_event_at() == twin.clock() + timedelta(seconds=30)
    assert [w.workflow_id for w in twin.workflows("cwf")] == [first, second]
    assert twin.workflows("nothing") == []


def test_concurrent_polls_hand_each_task_out_once() -> None:
    twin = _twin()
    for i in range(200):
        twin.start_workflow("cwf", input={}, correlation_id=str(i))
    seen: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (task := twin.poll_task("backup", "w")) is not None:
            with lock:
                seen.append(task.task_id)
            twin.update_task(task, "COMPLETED", {"v": 1})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == len(set(seen)) == 200
    assert len(twin.pending_tasks({"apply_retention"})) == 200


def test_the_clock_must_be_aware() -> None:
    twin = ConductorTwin(clock=lambda: datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        twin.get_task_def("x")
