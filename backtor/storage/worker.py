"""`backtor storage-worker`: serves the `backup` and `remove` tasks for chosen kinds.

One process serves a fixed set of kinds under fixed allowed roots (given at start and
pickled into the runner processes with the task functions). A task whose kind this process
does not serve fails terminally, naming the kinds it serves: operators run one storage
worker with every kind they use, so a task is never left waiting for another one.

How a task ends: COMPLETED; FAILED_WITH_TERMINAL_ERROR when its input can never work
(config.py, paths.py); FAILED, which Conductor retries, when the storage failed (full disk,
database down) — partial output is deleted first; handed back (IN_PROGRESS, no delay) when
the worker stops mid-backup, so another worker takes it without spending a retry.
"""

# No `from __future__ import annotations`: conductor-python reads the `Task` annotation of
# the task functions at run time.

import logging
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus

from backtor.observability.logs import configure_logging
from backtor.runtime.settings import Settings
from backtor.storage import filesystem, postgres
from backtor.storage.errors import RetryableError, Stopping, TerminalError
from backtor.storage.output import Budget, Taken, remove_data
from backtor.storage.paths import AllowedRoots, check_backup_name, check_data_id, roots_from
from backtor.storage.worker_config import (
    KINDS,
    FilesystemConfig,
    check_served,
    mask,
    parse_worker_config,
)
from backtor.workers.process import in_flight, stopping
from backtor.workers.results import failed, handed_back, result, terminal

log = logging.getLogger(__name__)

SUFFIXES = {"filesystem": filesystem.SUFFIX, "postgres": postgres.SUFFIX}
POLL_INTERVAL_MS = 250


@dataclass(frozen=True)
class StorageWorkerSettings:
    """What one storage worker process serves: its kinds and its allowed roots."""

    kinds: tuple[str, ...]
    roots: AllowedRoots


def backup_task(settings: StorageWorkerSettings, task: Task) -> TaskResult:
    """Take one backup as the task's workerConfig says; output dataId and dataSizeMB."""
    with in_flight():
        if stopping():
            return handed_back(task)
        data = task.input_data or {}
        name = data.get("backupName")
        secrets: tuple[str, ...] = ()
        try:
            name = check_backup_name(name)
            config = parse_worker_config(data.get("workerConfig"))
            secrets = config.secrets()
            check_served(config, settings.kinds)
            budget = Budget.start(data.get("timeoutSeconds"), stopping)
            when = _scheduled_at(task)
            task_id = str(task.task_id or "")
            taken: Taken
            if isinstance(config, FilesystemConfig):
                taken = filesystem.take_backup(config, settings.roots, name, when, task_id, budget)
            else:
                taken = postgres.take_backup(
                    config, settings.roots, name, when, task_id, budget, os.environ
                )
        except Exception as exc:
            return _failure(task, "backup", name, exc, secrets)
        log.info(
            "backup %s written (%d bytes)",
            taken.data_id,
            taken.size_bytes,
            extra={"backup": name, "workflow_id": task.workflow_instance_id},
        )
        return result(
            task,
            TaskResultStatus.COMPLETED,
            {"dataId": taken.data_id, "dataSizeMB": round(taken.size_bytes / 1_000_000, 6)},
        )


def remove_task(settings: StorageWorkerSettings, task: Task) -> TaskResult:
    """Delete one backup file; one that is already gone counts as removed."""
    with in_flight():
        if stopping():
            return handed_back(task)
        data = task.input_data or {}
        name = data.get("backupName")
        secrets: tuple[str, ...] = ()
        try:
            name = check_backup_name(name)
            config = parse_worker_config(data.get("workerConfig"))
            secrets = config.secrets()
            check_served(config, settings.kinds)
            data_id = check_data_id(data.get("dataId"), SUFFIXES[config.kind])
            target = settings.roots.resolve(config.target, "target")
            removed = remove_data(target, data_id)
        except Exception as exc:
            return _failure(task, "remove", name, exc, secrets)
        log.info(
            "backup %s %s",
            data_id,
            "removed" if removed else "was already gone",
            extra={"backup": name, "workflow_id": task.workflow_instance_id},
        )
        return result(task, TaskResultStatus.COMPLETED, {"dataId": data_id, "removed": removed})


def _failure(
    task: Task, action: str, name: object, exc: Exception, secrets: Sequence[str]
) -> TaskResult:
    """The TaskResult for an exception, its message masked (a DSN must never leak)."""
    context = {"backup": str(name), "workflow_id": task.workflow_instance_id}
    if isinstance(exc, Stopping):
        log.info("%s interrupted: the worker is stopping; handed back", action, extra=context)
        return handed_back(task)
    reason = mask(str(exc), secrets)
    if isinstance(exc, TerminalError):
        log.warning("%s refused: %s", action, reason, extra=context)
        return terminal(task, reason)
    if isinstance(exc, RetryableError):
        log.warning("%s failed, Conductor will retry: %s", action, reason, extra=context)
        return failed(task, reason)
    details = mask("".join(traceback.format_exception(exc)), secrets)
    log.error("%s failed unexpectedly:\n%s", action, details, extra=context)
    return failed(task, f"unexpected {type(exc).__name__}: {reason}")


def _scheduled_at(task: Task) -> datetime:
    """When Conductor scheduled the task: the same on every delivery of it."""
    try:
        millis = int(task.scheduled_time or 0)
    except (TypeError, ValueError):
        millis = 0
    return datetime.fromtimestamp(millis / 1000, UTC) if millis > 0 else datetime.now(UTC)


def storage_settings(
    kinds: Sequence[str], allow_roots: Sequence[str], env: Mapping[str, str]
) -> StorageWorkerSettings:
    """Check the command line before anything starts; ValueError says what is wrong."""
    served = tuple(sorted(set(kinds)))
    if not served:
        raise ValueError(f"name the kinds to serve: {' '.join(KINDS)} (e.g. --kind filesystem)")
    unknown = [k for k in served if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(unknown)} (known: {', '.join(KINDS)})")
    if "postgres" in served and not postgres.pg_dump_available():
        raise ValueError("kind postgres needs pg_dump on PATH (Debian: postgresql-client)")
    return StorageWorkerSettings(served, AllowedRoots.from_paths(roots_from(allow_roots, env)))


def run_storage_worker(storage: StorageWorkerSettings, settings: Settings, threads: int) -> int:
    """Poll `backup` and `remove` until SIGTERM or SIGINT; a running backup is handed back."""
    from backtor.workers.runner import stop_on_signals, task_handler
    from backtor.workers.stoppable import StoppableWorker

    configure_logging(settings.log_level, settings.log_format)
    stop = stop_on_signals()
    common = {
        "poll_interval": POLL_INTERVAL_MS,
        "thread_count": threads,
        "lease_extend_enabled": True,  # a long backup keeps its task past responseTimeout
    }
    handler = task_handler(
        settings.conductor_api_url,
        [
            StoppableWorker("backup", partial(backup_task, storage), **common),
            StoppableWorker("remove", partial(remove_task, storage), **common),
        ],
    )
    handler.start_processes()
    log.info(
        "storage worker serving %s under %s; polling backup, remove at %s",
        ", ".join(storage.kinds),
        storage.roots.describe(),
        settings.conductor_api_url,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        handler.stop_processes()
        log.info("storage worker stopped")
    return 0
