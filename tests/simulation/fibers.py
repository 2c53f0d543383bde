"""Cooperative fibers: Backtor code runs in threads, one at a time, pausing at step boundaries.

Why threads: the scheduling core is plain blocking code; to interleave two replicas' passes
at the places where a real process could be overtaken (each Conductor call, each
transaction) without touching that code, each in-flight call runs in its own thread and
hands a baton back to the simulation's loop at every step boundary. Only the baton holder
runs, so an interleaving is a pure function of the seed. Threads are pooled: creating one
per action costs more than the action.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STUCK_SECONDS = 60.0


class Crash(BaseException):
    """The acting process dies here. A BaseException, so no `except Exception` swallows it."""


class Stop(BaseException):
    """Raised into a paused fiber to unwind it when a scenario is torn down."""


@dataclass
class Acting:
    """Who is running Backtor code right now, and where it is told to crash.

    `crash_at` is the step boundary (1-based) at which the action dies; None: it does not.
    """

    name: str
    crash_at: int | None = None
    steps: int = 0
    fiber: Fiber | None = None
    crashed_at: str | None = None
    depth: int = 0  # transactions open through Services.db.begin()
    sessions: list[Any] = field(default_factory=list)  # sessions made through Services.db()

    def in_transaction(self) -> bool:
        return self.depth > 0 or any(session.in_transaction() for session in self.sessions)


_local = threading.local()


def acting() -> Acting | None:
    """The action running on this thread (None: harness code, no boundaries)."""
    current: Acting | None = getattr(_local, "acting", None)
    return current


def set_acting(value: Acting | None) -> None:
    _local.acting = value


class Fiber:
    """A reusable thread that runs one job at a time and pauses when told to."""

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._back = threading.Lock()
        self._back.acquire()
        self._job: Callable[[], Any] | None = None
        self._stop = False
        self._exit = False
        self.done = True
        self.result: Any = None
        self.error: BaseException | None = None
        self.wake_ms = 0
        self._thread = threading.Thread(target=self._loop, name="sim-fiber", daemon=True)
        self._thread.start()

    def start(self, job: Callable[[], Any]) -> None:
        assert self.done, "a fiber runs one job at a time"
        self._job, self.done, self.result, self.error, self._stop = job, False, None, None, False

    def resume(self) -> None:
        """Run the job until its next pause or its end (called by the simulation's loop).

        Real seconds, not simulated ones: a job that neither pauses nor ends within a minute
        is blocked on something other than the baton (a harness bug), and must fail the run
        rather than hang it.
        """
        self._go.release()
        if not self._back.acquire(timeout=STUCK_SECONDS):
            raise RuntimeError(f"a simulated process is stuck (no step for {STUCK_SECONDS} s)")

    def pause(self, wake_ms: int) -> None:
        """Hand the baton back; continue when resumed (called on the fiber's own thread)."""
        self.wake_ms = wake_ms
        self._back.release()
        self._go.acquire()
        if self._stop:
            raise Stop()

    def stop(self) -> None:
        """Unwind a paused job (its `finally` blocks and rollbacks run)."""
        if not self.done:
            self._stop = True
            self.resume()
            assert self.done, "a stopped fiber must unwind"

    def close(self) -> None:
        self.stop()
        self._exit = True
        self._go.release()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            if self._exit:
                return
            job, self._job = self._job, None
            assert job is not None
            try:
                self.result = job()
            except BaseException as error:  # handed to the loop, which decides
                self.error = error
            finally:
                set_acting(None)
                self.done = True
            self._back.release()


class FiberPool:
    """Idle fibers, kept across scenarios."""

    def __init__(self) -> None:
        self._idle: list[Fiber] = []
        self._all: list[Fiber] = []

    def take(self) -> Fiber:
        if self._idle:
            return self._idle.pop()
        fiber = Fiber()
        self._all.append(fiber)
        return fiber

    def give_back(self, fiber: Fiber) -> None:
        assert fiber.done
        self._idle.append(fiber)

    def close(self) -> None:
        for fiber in self._all:
            fiber.close()
        self._all.clear()
        self._idle.clear()
