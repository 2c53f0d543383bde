"""Thread isolation's runner (backtor.workers.threads) on the Conductor twin, in real time.

The twin's queue is held to the real server's by the contract suite (poll_tasks included);
here the twin's clock stands still, so only the runner's own threads and waits move.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowStatus
from backtor.conductor.results import TaskOutcome, completed
from backtor.conductor.twin import ConductorTwin
from backtor.workers.threads import TaskType, ThreadRunner
from tests.support.waiting import wait_until

TASK = "unit_task"
FLOW = "unit_flow"
WAIT_MS = 50  # the twin never holds a poll: the runner's own pause between empty polls


class Crash(BaseException):
    """Escapes the poller loop's `except Exception`: its thread dies."""


@pytest.fixture
def twin() -> ConductorTwin:
    twin = ConductorTwin()
    twin.create_task_defs(
        [{"name": TASK, "retryCount": 0, "responseTimeoutSeconds": 30, "timeoutSeconds": 60}]
    )
    twin.put_workflow_defs(
        [
            {
                "name": FLOW,
                "version": 1,
                "schemaVersion": 2,
                "tasks": [
                    {
                        "name": TASK,
                        "taskReferenceName": "t0",
                        "type": "SIMPLE",
                        "inputParameters": {"n": "${workflow.input.n}"},
                    }
                ],
            }
        ]
    )
    return twin


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    stop = threading.Event()
    yield stop
    stop.set()


def runner(
    queue: Any,
    handler: Callable[[TaskRun], TaskOutcome],
    stop: threading.Event,
    *,
    threads: int = 2,
    slot_seconds: float = 30,
) -> ThreadRunner:
    return ThreadRunner(
        queue,
        [TaskType(TASK, handler, threads, slot_seconds)],
        worker_id="unit",
        stop=stop,
        wait_ms=WAIT_MS,
    )


def start(twin: ConductorTwin, n: int) -> str:
    return twin.start_workflow(FLOW, input={"n": n}, correlation_id=f"c{n}")


def task_of(twin: ConductorTwin, workflow_id: str) -> TaskRun:
    return twin.get_workflow(workflow_id).tasks[0]


def echo(task: TaskRun) -> TaskOutcome:
    return completed({"n": task.input["n"]})


def test_tasks_are_polled_run_and_reported_under_the_worker_id(
    twin: ConductorTwin, stop: threading.Event
) -> None:
    ids = [start(twin, n) for n in range(5)]
    threads = runner(twin, echo, stop)
    threads.start()
    wait_until(
        lambda: all(twin.get_workflow(i).status == WorkflowStatus.COMPLETED for i in ids),
        timeout=10,
        interval=0.02,
        what="five workflows completed",
    )
    for n, workflow_id in enumerate(ids):
        task = task_of(twin, workflow_id)
        assert (dict(task.output), task.worker_id) == ({"n": n}, "unit")
    assert threads.stop(timeout=5)


def test_a_handler_that_raises_fails_its_task_and_its_type_keeps_polling(
    twin: ConductorTwin, stop: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    def flaky(task: TaskRun) -> TaskOutcome:
        if task.input["n"] == 0:
            raise RuntimeError("disk on fire")
        return echo(task)

    first = start(twin, 0)
    threads = runner(twin, flaky, stop)
    threads.start()
    wait_until(
        lambda: task_of(twin, first).status == TaskStatus.FAILED, timeout=10, what="a failure"
    )
    assert task_of(twin, first).reason == "RuntimeError: disk on fire"
    assert "unit_task task" in caplog.text and "disk on fire" in caplog.text
    second = start(twin, 1)
    wait_until(
        lambda: twin.get_workflow(second).status == WorkflowStatus.COMPLETED,
        timeout=10,
        what="the next task of the type",
    )
    assert threads.is_healthy()


def test_a_poller_thread_that_dies_is_reported_and_started_again(
    twin: ConductorTwin, stop: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    crashes = [Crash("a bug in the loop")]

    class CrashingOnce:
        """The twin, but the first poll kills the poller thread."""

        def __getattr__(self, name: str) -> Any:
            return getattr(twin, name)

        def poll_tasks(self, *args: Any, **kwargs: Any) -> list[TaskRun]:
            if crashes:
                raise crashes.pop()
            return twin.poll_tasks(*args, **kwargs)

    threads = runner(CrashingOnce(), echo, stop)
    previous_hook = threading.excepthook
    threading.excepthook = lambda _args: None  # the crash is the point, not news
    try:
        threads.start()
        wait_until(lambda: not threads.is_healthy(), timeout=10, what="the poller to die")
    finally:
        threading.excepthook = previous_hook
    assert threads.get_worker_process_status() == [
        {"worker": TASK, "alive": False, "restart_count": 0}
    ]
    workflow_id = start(twin, 7)
    with caplog.at_level(logging.ERROR):
        threads.supervise()  # what the worker's main loop does every watchdog round
    assert f"the {TASK} poller thread died; starting it again (restart 1)" in caplog.text
    assert threads.is_healthy()
    assert threads.get_worker_process_status()[0]["restart_count"] == 1
    wait_until(
        lambda: twin.get_workflow(workflow_id).status == WorkflowStatus.COMPLETED,
        timeout=10,
        what="the task type served again",
    )


def test_a_stuck_task_gives_its_slot_up_after_its_bound(
    twin: ConductorTwin, stop: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def hangs_first(task: TaskRun) -> TaskOutcome:
        if task.input["n"] == 0:
            release.wait(30)
        return echo(task)

    stuck = start(twin, 0)
    threads = runner(twin, hangs_first, stop, threads=1, slot_seconds=0.5)
    threads.start()
    wait_until(lambda: task_of(twin, stuck).worker_id == "unit", timeout=10, what="a poll")
    nxt = start(twin, 1)
    try:
        wait_until(
            lambda: twin.get_workflow(nxt).status == WorkflowStatus.COMPLETED,
            timeout=10,
            interval=0.05,
            what="the next task, past the stuck one's slot",
        )
        assert task_of(twin, stuck).status == TaskStatus.IN_PROGRESS  # still stuck
        assert "past its response timeout: its slot is freed" in caplog.text
    finally:
        release.set()
    wait_until(
        lambda: twin.get_workflow(stuck).status == WorkflowStatus.COMPLETED,
        timeout=10,
        what="the stuck task, once released",
    )


def test_a_full_type_polls_nothing_until_a_slot_is_free(
    twin: ConductorTwin, stop: threading.Event
) -> None:
    release = threading.Event()
    running: list[int] = []

    def blocks(task: TaskRun) -> TaskOutcome:
        running.append(int(task.input["n"]))
        release.wait(30)
        return echo(task)

    ids = [start(twin, n) for n in range(3)]
    threads = runner(twin, blocks, stop, threads=2)
    threads.start()
    try:
        wait_until(lambda: len(running) == 2, timeout=10, what="two tasks running")
        waiting = [i for i in ids if task_of(twin, i).status == TaskStatus.SCHEDULED]
        assert len(waiting) == 1  # the third stays queued for another worker
    finally:
        release.set()
    wait_until(
        lambda: all(twin.get_workflow(i).status == WorkflowStatus.COMPLETED for i in ids),
        timeout=10,
        what="all three",
    )


def test_stop_waits_for_running_tasks_to_report(twin: ConductorTwin, stop: threading.Event) -> None:
    began = threading.Event()

    def slow(task: TaskRun) -> TaskOutcome:
        began.set()
        stop.wait(30)  # a task that notices the stop and finishes
        return echo(task)

    workflow_id = start(twin, 3)
    threads = runner(twin, slow, stop)
    threads.start()
    assert began.wait(10)
    assert threads.stop(timeout=10)
    assert twin.get_workflow(workflow_id).status == WorkflowStatus.COMPLETED
    assert not any(p.alive() for p in threads.pollers)


def test_a_waiting_poll_asks_for_one_task_and_a_poll_after_a_hit_does_not_wait(
    twin: ConductorTwin, stop: threading.Event
) -> None:
    """Conductor holds a batch poll until it has `count` tasks or its wait is over
    (measured on Conductor OSS 3.32: count 2 and one task queued answers after the whole
    wait): only a poll for one task may wait, or a queued task would wait with it."""
    polls: list[tuple[int, int]] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(twin, name)

        def poll_tasks(self, task_type: str, worker_id: str, count: int, wait_ms: int) -> Any:
            polls.append((count, wait_ms))
            return twin.poll_tasks(task_type, worker_id, count, wait_ms)

    threads = runner(Recording(), echo, stop, threads=4)
    threads.start()
    wait_until(lambda: len(polls) >= 2, timeout=10, what="two idle polls")
    ids = [start(twin, n) for n in range(3)]
    wait_until(
        lambda: all(twin.get_workflow(i).status == WorkflowStatus.COMPLETED for i in ids),
        timeout=10,
        what="three tasks",
    )
    assert all(count == 1 for count, wait in polls if wait > 0), polls
    assert any(count > 1 and wait == 0 for count, wait in polls), polls
