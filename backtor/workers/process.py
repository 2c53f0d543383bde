"""Per-process state of the processes that run Backtor's tasks.

Process isolation: built lazily in each task-runner process, because runners are spawned.
Graceful stop: on SIGTERM a runner stops polling (backtor.conductor.sdk.StoppableWorker
reads `stopping()`), lets the task it runs finish and report, then exits. A task that was being
polled at that moment still reaches it and runs before the exit, so nothing is left
claimed by a dead process.

Thread isolation (backtor.workers.threads): the worker's main process hands its own
Services over (`use_services`) and says when to stop (`request_stop`); it waits for the
running tasks itself, so nothing here exits the process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from backtor.observability.logs import configure_logging
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings

# After the last task of a stopping runner, time for its result to reach Conductor.
REPORT_GRACE_SECONDS = 0.5

_services: Services | None = None
_lock = threading.Lock()
_busy = 0
_stop = threading.Event()
# True in a spawned task-runner process only: there, a stop ends the process when idle.
_exit_when_stopped = False


def process_services() -> Services:
    global _services
    with _lock:
        if _services is None:
            settings = Settings.from_env()
            configure_logging(settings.log_level, settings.log_format)
            _services = Services.from_settings(settings)
        return _services


def use_services(services: Services) -> None:
    """Thread isolation: the tasks share the main process's Services (one engine, one pool)."""
    global _services
    with _lock:
        _services = services


def request_stop() -> None:
    """Thread isolation: the scheduler's task hands the tick back, waits end at once."""
    _stop.set()


def stop_event() -> threading.Event:
    """What `stopping()` reads, for the pollers of thread isolation."""
    return _stop


def on_runner_spawn() -> None:
    """In a freshly spawned task runner: graceful SIGTERM, and Backtor's log format first."""
    install_graceful_stop()
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)


def stopping() -> bool:
    return _stop.is_set()


def wait(seconds: float) -> bool:
    """Sleep, cut short by a stop; True when stopping."""
    return _stop.wait(seconds)


@contextmanager
def in_flight() -> Iterator[None]:
    """Mark a task as running, so a stop waits for it to finish and report."""
    global _busy
    with _lock:
        _busy += 1
    try:
        yield
    finally:
        with _lock:
            _busy -= 1
        if _stop.is_set() and _exit_when_stopped:
            threading.Timer(REPORT_GRACE_SECONDS, _exit_when_idle).start()


def install_graceful_stop() -> None:
    """In a spawned task-runner process (its main thread): handle SIGTERM gracefully."""
    global _exit_when_stopped
    if threading.current_thread() is threading.main_thread():
        _exit_when_stopped = True
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    _stop.set()
    threading.Timer(REPORT_GRACE_SECONDS, _exit_when_idle).start()


def _exit_when_idle() -> None:
    with _lock:
        if _busy:
            return
    sys.stderr.flush()
    os._exit(0)
