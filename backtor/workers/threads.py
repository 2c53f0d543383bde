"""Thread isolation: Backtor's own tasks polled and run inside the worker's one process.

One poller thread per task type long-polls Conductor (`poll_tasks` for one task: the
server holds an empty poll up to POLL_WAIT_MS and answers as soon as a task is queued), so
an idle worker asks four times per wait instead of spinning runner processes; after a hit
it takes what else is queued, up to its free slots, without waiting. Each polled task runs
in a thread of its own, at most `threads` at once per type.

A thread cannot be killed. A task that runs past its definition's responseTimeoutSeconds
plus SLOT_MARGIN_SECONDS no longer holds its slot: by then Conductor has handed it out
again, and every Backtor task is idempotent (a late scheduler pass is fenced by the pass
lease, which each execution takes under a holder of its own). The stuck thread is logged
and left to finish on its own, so one hung call cannot stop a task type.

A poller thread that dies (an error its loop does not expect) is logged and started again
by `supervise()`, which the worker's main loop calls every watchdog round; until then the
readiness probe reports it (backtor.workers.health).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from backtor.conductor.payloads import TaskRun
from backtor.conductor.port import TaskQueue
from backtor.conductor.results import TaskOutcome, failed

log = logging.getLogger(__name__)

# How long Conductor may hold an empty poll: a queued task is answered at once (within the
# server's queue check, about half a second), so this sets the idle request rate (four
# polls per wait, about 1.6 ms of CPU each), not the latency. It also bounds how long a
# stop waits for the pollers' last polls (docs/performance.md#worker-footprint).
POLL_WAIT_MS = 5000
# After a failed poll: first pause, and the longest (a Conductor back within this is
# polled again within it; the tick's 15 s failover needs it well under 15 s).
POLL_BACKOFF_SECONDS = 0.5
POLL_BACKOFF_MAX_SECONDS = 5.0
# Reporting a result Conductor did not take: attempts, and the pause before each retry.
REPORT_ATTEMPTS = 4
REPORT_BACKOFF_SECONDS = 1.0
# Past its responseTimeoutSeconds plus this, a running task no longer holds a slot.
SLOT_MARGIN_SECONDS = 5.0
# A full poller re-checks its overdue tasks at least this often.
SLOT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class TaskType:
    """One of Backtor's task types as this runner serves it."""

    name: str
    handler: Callable[[TaskRun], TaskOutcome]
    threads: int
    slot_seconds: float  # a task running longer than this gives its slot up


@dataclass
class _Running:
    thread: threading.Thread
    task_id: str
    since: float
    overdue: bool = False


class TaskTypePoller:
    """Polls one task type and runs its tasks in threads, at most `threads` at once."""

    def __init__(
        self,
        queue: TaskQueue,
        task_type: TaskType,
        *,
        worker_id: str,
        stop: threading.Event,
        wait_ms: int = POLL_WAIT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.type = task_type
        self.worker_id = worker_id
        self.wait_ms = wait_ms
        self._stop = stop
        self._clock = clock
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._running: dict[int, _Running] = {}
        self._numbers = itertools.count(1)
        self.restarts = 0
        self.thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(
            target=self._loop, name=f"backtor-poll-{self.type.name}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def restart(self) -> None:
        """Start a fresh poller thread after this one died (the tasks it started run on)."""
        self.restarts += 1
        self.thread = self._new_thread()
        self.thread.start()

    def in_flight(self) -> list[threading.Thread]:
        with self._lock:
            return [r.thread for r in self._running.values()]

    def free_slots(self) -> int:
        """Slots not held by a running task; a task past `slot_seconds` holds none."""
        now = self._clock()
        with self._lock:
            held = 0
            for running in self._running.values():
                if now - running.since <= self.type.slot_seconds:
                    held += 1
                elif not running.overdue:
                    running.overdue = True
                    log.error(
                        "%s task %s has run for %.0f s, past its response timeout: its slot "
                        "is freed (a thread cannot be killed; Conductor has handed the task "
                        "out again, and it is idempotent)",
                        self.type.name,
                        running.task_id,
                        now - running.since,
                    )
        return max(0, self.type.threads - held)

    def _loop(self) -> None:
        failures = 0
        idle = True  # the last poll found nothing
        while not self._stop.is_set():
            self._slot_freed.clear()  # before counting: a task ending after it wakes the wait
            free = self.free_slots()
            if free == 0:
                self._slot_freed.wait(SLOT_CHECK_SECONDS)
                continue
            # Conductor holds a batch poll until it has `count` tasks or the wait is over: a
            # waiting poll asks for one task (answered as soon as one is queued); after a
            # hit, a poll that does not wait takes up to `free` of those already queued.
            count, wait_ms = (1, self.wait_ms) if idle else (free, 0)
            began = self._clock()
            try:
                tasks = self.queue.poll_tasks(self.type.name, self.worker_id, count, wait_ms)
            except Exception as exc:  # Conductor away, refusing, or answering nonsense
                idle = True
                failures += 1
                pause = min(POLL_BACKOFF_MAX_SECONDS, POLL_BACKOFF_SECONDS * 2 ** (failures - 1))
                log.warning("polling %s failed (%s); again in %.1f s", self.type.name, exc, pause)
                self._stop.wait(pause)
                continue
            if failures:
                log.info("polling %s again", self.type.name)
                failures = 0
            # Polled while stopping: still run, so nothing is left claimed by a dead process
            # (the scheduler's task hands itself back at once when stopping).
            for task in tasks:
                self._run_in_thread(task)
            idle = not tasks
            if idle and wait_ms:
                # A server that answers an empty poll early (no long poll) is not asked
                # again before the wait is over.
                self._stop.wait(max(0.0, wait_ms / 1000 - (self._clock() - began)))

    def _run_in_thread(self, task: TaskRun) -> None:
        thread = threading.Thread(
            target=self._run,
            args=(task,),
            name=f"backtor-{self.type.name}-{next(self._numbers)}",
            daemon=True,
        )
        with self._lock:
            self._running[id(thread)] = _Running(thread, task.task_id, self._clock())
        thread.start()

    def _run(self, task: TaskRun) -> None:
        try:
            try:
                outcome = self.type.handler(task)
            except Exception as exc:
                log.exception("%s task %s failed", self.type.name, task.task_id)
                outcome = failed(f"{type(exc).__name__}: {exc}")
            self._report(task, outcome)
        finally:
            with self._lock:
                self._running.pop(id(threading.current_thread()), None)
            self._slot_freed.set()

    def _report(self, task: TaskRun, outcome: TaskOutcome) -> None:
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                self.queue.update_task(
                    task,
                    outcome.status,
                    outcome.output,
                    callback_after_seconds=outcome.callback_after_seconds,
                    reason=outcome.reason,
                    worker_id=self.worker_id,
                )
                return
            except Exception as exc:
                if attempt == REPORT_ATTEMPTS:
                    # Conductor hands the task out again after its response timeout.
                    log.error(
                        "%s task %s: result not reported after %d attempts (%s)",
                        self.type.name,
                        task.task_id,
                        attempt,
                        exc,
                    )
                    return
                log.warning(
                    "%s task %s: reporting its result failed (%s); retrying",
                    self.type.name,
                    task.task_id,
                    exc,
                )
                time.sleep(REPORT_BACKOFF_SECONDS * attempt)


class ThreadRunner:
    """All of Backtor's task types in this process; what the readiness probe reads."""

    def __init__(
        self,
        queue: TaskQueue,
        task_types: Iterable[TaskType],
        *,
        worker_id: str,
        stop: threading.Event,
        wait_ms: int = POLL_WAIT_MS,
    ) -> None:
        self._stop = stop
        self.pollers = [
            TaskTypePoller(queue, t, worker_id=worker_id, stop=stop, wait_ms=wait_ms)
            for t in task_types
        ]

    def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    def supervise(self) -> None:
        """Start again any poller thread that died: a task type must never stop silently."""
        for poller in self.pollers:
            if not poller.alive() and not self._stop.is_set():
                log.error(
                    "the %s poller thread died; starting it again (restart %d)",
                    poller.type.name,
                    poller.restarts + 1,
                )
                poller.restart()

    def stop(self, timeout: float) -> bool:
        """Stop polling, then wait up to `timeout` s for running tasks to report (True: all did)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for poller in self.pollers:
            poller.thread.join(max(0.0, deadline - time.monotonic()))
        for poller in self.pollers:
            for thread in poller.in_flight():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(p.in_flight() for p in self.pollers)

    # -- what backtor.workers.health.TaskRunners asks ------------------------------------------

    def is_healthy(self) -> bool:
        return all(p.alive() for p in self.pollers)

    def get_worker_process_status(self) -> list[dict[str, Any]]:
        return [
            {"worker": p.type.name, "alive": p.alive(), "restart_count": p.restarts}
            for p in self.pollers
        ]
