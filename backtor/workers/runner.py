"""`backtor worker`: registers the definitions, polls Backtor's tasks, keeps the tick alive.

BACKTOR_WORKER_ISOLATION picks how the tasks run: `thread` (the default), pollers and task
threads in this one process (backtor.workers.threads); `process`, one runner process per
task type spawned by conductor-python's TaskHandler. On SIGTERM or SIGINT the main process
stops its watchdog, then the runners: each running task finishes and reports (see
workers.process); anything cut short is delivered again by Conductor, and every task is
idempotent.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from backtor.conductor import names
from backtor.conductor.http import ConductorClient
from backtor.conductor.payloads import TaskRun
from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.conductor.results import TaskOutcome
from backtor.core.errors import ConductorUnavailable
from backtor.observability.logs import configure_logging
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings
from backtor.scheduling.watchdog import ensure_tick
from backtor.workers import process
from backtor.workers.health import WorkerHealth, start_health_server
from backtor.workers.threads import SLOT_MARGIN_SECONDS, TaskType, ThreadRunner

log = logging.getLogger(__name__)

Handler = Callable[[TaskRun], TaskOutcome]

# How often each worker looks after the tick; with the watchdog's STALL and LEASE this
# bounds a failover to about STALL + WATCHDOG_SECONDS.
WATCHDOG_SECONDS = 2.0
# Every this many rounds (and at the first) the watchdog looks at every possible tick
# shard's workflow, not only the shards in force (backtor.scheduling.watchdog.ensure_tick).
SWEEP_ROUNDS = 15


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: the main process's cue to stop its runners."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


# Thread isolation: how long a stop waits for running tasks to report. Under the 20 s that
# `backtor run` and the e2e tests give a worker, with room for the pollers' last long poll.
STOP_WAIT_SECONDS = 12.0


def task_types(tick_shards: int = 1) -> list[TaskType]:
    """Backtor's task types with their concurrency; a slot lasts the task's response timeout
    plus a margin (backtor.workers.threads). One evaluate_schedule per tick shard at most:
    one replica may hold several shards' ticks at once."""
    from backtor.workers import tasks

    def task_type(name: str, handler: Handler, threads: int) -> TaskType:
        timeout = float(DEFINITIONS.task_defs[name]["responseTimeoutSeconds"])
        return TaskType(name, handler, threads, timeout + SLOT_MARGIN_SECONDS)

    return [
        task_type(names.EVALUATE_SCHEDULE, tasks.evaluate_schedule, tick_shards),
        task_type(names.APPLY_RETENTION, tasks.apply_retention, 4),
        task_type(names.RECORD_REMOVAL, tasks.record_removal, 4),
        task_type(names.DELIVER_NOTICE, tasks.deliver_notice, 2),
    ]


class ThreadTasks:
    """Thread isolation behind the calls the main loop makes on either kind of runner."""

    def __init__(self, settings: Settings, services: Services) -> None:
        process.use_services(services)
        # A client of its own: the long polls do not queue behind the scheduler's calls.
        self.queue = ConductorClient(settings.conductor_api_url)
        self.runner = ThreadRunner(
            self.queue,
            task_types(settings.tick_shards),
            worker_id=settings.worker_id or socket.gethostname(),
            stop=process.stop_event(),
        )

    def start_processes(self) -> None:
        self.runner.start()

    def supervise(self) -> None:
        self.runner.supervise()

    def stop_processes(self) -> None:
        process.request_stop()
        if not self.runner.stop(STOP_WAIT_SECONDS):
            log.warning("stopping with tasks still running: Conductor will hand them out again")
        self.queue.close()

    def is_healthy(self) -> bool:
        return self.runner.is_healthy()

    def get_worker_process_status(self) -> list[dict[str, Any]]:
        return self.runner.get_worker_process_status()


def build_task_handler(settings: Settings) -> object:
    # Imported here: importing conductor-python's automator switches multiprocessing to spawn.
    from backtor.conductor import sdk
    from backtor.workers import tasks

    def worker(task_type: str, handler: sdk.Handler, poll: int, threads: int) -> Any:
        return sdk.StoppableWorker(
            task_type,
            handler,
            stopping=process.stopping,
            on_spawn=process.on_runner_spawn,
            poll_interval=poll,
            thread_count=threads,
        )

    workers = [
        worker(names.EVALUATE_SCHEDULE, tasks.evaluate_schedule, 100, settings.tick_shards),
        worker(names.APPLY_RETENTION, tasks.apply_retention, 200, 4),
        worker(names.RECORD_REMOVAL, tasks.record_removal, 200, 4),
        worker(names.DELIVER_NOTICE, tasks.deliver_notice, 500, 2),
    ]
    return sdk.task_handler(settings.conductor_api_url, workers)


def register_when_reachable(services: Services, stop: threading.Event) -> bool:
    delay = 1.0
    while not stop.is_set():
        try:
            register_definitions(services.conductor)
            return True
        except ConductorUnavailable as exc:
            log.warning("Conductor not reachable yet (%s); retrying in %.0f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)
    return False


def run_worker(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    stop = stop_on_signals()
    services = Services.from_settings(settings)
    # Probes first: alive while Conductor is still coming up, ready once all is in place.
    health = WorkerHealth(
        ConductorClient(settings.conductor_api_url, timeout=3.0).is_healthy,
        watchdog_every=WATCHDOG_SECONDS,
    )
    probes = start_health_server(health, settings.worker_health_host, settings.worker_health_port)
    health.keep_checking_conductor()
    if not register_when_reachable(services, stop):
        return 0
    health.registered = True
    threads = settings.worker_isolation == "thread"
    handler: Any = ThreadTasks(settings, services) if threads else build_task_handler(settings)
    handler.start_processes()
    health.runners = handler
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    log.info(
        "worker %s polling evaluate_schedule, apply_retention, record_removal, deliver_notice "
        "(%s isolation)",
        holder,
        settings.worker_isolation,
    )
    rounds = itertools.count()
    try:
        while not stop.is_set():
            if threads:
                handler.supervise()
            sweep = next(rounds) % SWEEP_ROUNDS == 0
            try:
                ensure_tick(services, holder, sweep=sweep)
                health.watchdog_ran()
            except Exception as exc:  # the watchdog must outlive any one failure
                log.warning("scheduler watchdog: %s", exc)
            stop.wait(WATCHDOG_SECONDS)
    finally:
        started = time.monotonic()
        health.stop()
        if probes is not None:
            probes.close()
        handler.stop_processes()
        services.close()
        log.info("worker stopped in %.1f s", time.monotonic() - started)
    return 0
