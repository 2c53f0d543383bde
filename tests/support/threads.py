"""Running callables side by side in threads, without losing what a thread raised.

An exception in a plain `threading.Thread` only becomes a warning (pytest's
PytestUnhandledThreadExceptionWarning), and a test whose asserts one surviving thread can
satisfy would pass. `run_together` collects every thread's result and exception and raises
them all, so a crashed thread fails the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def run_together(targets: Sequence[Callable[[], Any]], *, timeout: float = 120.0) -> list[Any]:
    """Run each target in its own thread, released at once by a barrier; their results.

    Raises a BaseExceptionGroup of every exception raised in a thread, and an AssertionError
    when a thread is still running after `timeout` seconds.
    """
    count = len(targets)
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException | None] = [None] * count

    def run(slot: int) -> None:
        try:
            barrier.wait(timeout)
            results[slot] = targets[slot]()
        except BaseException as exc:  # every failure is reported below
            errors[slot] = exc

    threads = [
        threading.Thread(target=run, args=(slot,), name=f"together-{slot}", daemon=True)
        for slot in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    hung = [thread.name for thread in threads if thread.is_alive()]
    if hung:
        raise AssertionError(f"threads still running after {timeout} s: {hung}")
    failed = [error for error in errors if error is not None]
    if failed:
        raise BaseExceptionGroup(f"{len(failed)} of {count} threads failed", failed)
    return results
