"""`backtor storage-worker`: serves the `backup`, `remove`, `verify` and `restore` tasks for
chosen kinds.

One process serves a fixed set of kinds under fixed allowed roots (given at start and
pickled into the runner processes with the task functions). A task whose kind this process
does not serve fails terminally, naming the kinds it serves: operators run one storage
worker with every kind they use, so a task is never left waiting for another one.

How a task ends: COMPLETED; FAILED_WITH_TERMINAL_ERROR when its input can never work
(worker_config.py, paths.py); FAILED, which Conductor retries, when the storage failed
(full disk, database down) — partial output is deleted first; handed back (IN_PROGRESS, no
delay) when the worker stops mid-backup, so another worker takes it without spending a retry.
`verify` completes whatever it finds (`verified` false names the fault); only a backup that
is missing, or input that cannot work, fails it.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from backtor.conductor.http import ConductorClient
from backtor.conductor.names import BACKUP, REMOVE, RESTORE, VERIFY
from backtor.conductor.payloads import TaskRun, TaskStatus
from backtor.conductor.port import Conductor
from backtor.conductor.results import TaskOutcome, completed, failed, handed_back, terminal
from backtor.core.errors import BacktorError, SettingError
from backtor.observability.logs import configure_logging
from backtor.runtime.settings import Settings
from backtor.storage import filesystem, postgres
from backtor.storage.errors import RetryableError, Stopping, TerminalError
from backtor.storage.output import Budget, Restored, Taken, Verification, remove_data
from backtor.storage.paths import AllowedRoots, check_backup_name, check_data_id
from backtor.storage.task_input import (
    FilesystemRestore,
    PostgresRestore,
    parse_checksum,
    parse_restore_config,
    parse_row_counts,
    parse_verify_config,
)
from backtor.storage.worker_config import (
    KINDS,
    FilesystemConfig,
    PostgresConfig,
    WorkerConfig,
    check_served,
    mask,
    parse_worker_config,
)
from backtor.workers.process import in_flight, on_runner_spawn, stopping

log = logging.getLogger(__name__)

SUFFIXES = {"filesystem": filesystem.SUFFIX, "postgres": postgres.SUFFIX}
POLL_INTERVAL_MS = 250


@dataclass(frozen=True)
class StorageWorkerSettings:
    """What one storage worker process serves: its kinds and its allowed roots."""

    kinds: tuple[str, ...]
    roots: AllowedRoots


@dataclass(frozen=True)
class TaskInput:
    """A storage task's input once checked, with the secrets to mask in any message."""

    name: str
    config: WorkerConfig
    data: Mapping[str, Any]
    secrets: tuple[str, ...]


def _checked_input(
    settings: StorageWorkerSettings, task: TaskRun, action: str
) -> TaskInput | TaskOutcome:
    """The preamble of both tasks: the checked input, or already the task's outcome.

    One step returns both because a refusal must be masked with the secrets parsed before
    it (a workerConfig of a kind not served here still holds a DSN).
    """
    if stopping():
        return handed_back()
    data = task.input
    name = data.get("backupName")
    secrets: tuple[str, ...] = ()
    try:
        name = check_backup_name(name)
        config = parse_worker_config(data.get("workerConfig"))
        secrets = config.secrets()
        check_served(config, settings.kinds)
    except Exception as exc:
        return _failure(task, action, name, exc, secrets)
    return TaskInput(name, config, data, secrets)


class _RunConfig(Protocol):
    def secrets(self) -> tuple[str, ...]: ...


RunConfigT = TypeVar("RunConfigT", bound=_RunConfig)


@dataclass(frozen=True)
class StoredInput(Generic[RunConfigT]):
    """The input of a task on a stored backup (`verify`, `restore`) once checked: the
    backup's dataId and recorded checksum, the request's config, the task's budget, and
    every secret parsed so far (the workerConfig's and the request config's)."""

    name: str
    config: WorkerConfig
    data: Mapping[str, Any]
    data_id: str
    run_config: RunConfigT
    expected: str | None
    budget: Budget
    secrets: tuple[str, ...]


def _stored_input(
    settings: StorageWorkerSettings,
    task: TaskRun,
    action: str,
    config_input: str,
    parse_config: Callable[[object, str], RunConfigT],
) -> StoredInput[RunConfigT] | TaskOutcome:
    """The opening of `verify` and `restore`: the checked input, or already the task's
    outcome (a refusal masked with every secret parsed before it)."""
    checked = _checked_input(settings, task, action)
    if not isinstance(checked, TaskInput):
        return checked
    data, secrets = checked.data, checked.secrets
    try:
        data_id = check_data_id(data.get("dataId"), SUFFIXES[checked.config.kind])
        run_config = parse_config(data.get(config_input), checked.config.kind)
        secrets = (*secrets, *run_config.secrets())
        expected = parse_checksum(data.get("checksum"))
        budget = Budget.start(data.get("timeoutSeconds"), stopping, activity=action)
    except Exception as exc:
        return _failure(task, action, checked.name, exc, secrets)
    return StoredInput(
        checked.name, checked.config, data, data_id, run_config, expected, budget, secrets
    )


def backup_task(settings: StorageWorkerSettings, task: TaskRun) -> TaskOutcome:
    """Take one backup as the task's workerConfig says; output dataId and dataSizeMB."""
    with in_flight():
        checked = _checked_input(settings, task, "backup")
        if not isinstance(checked, TaskInput):
            return checked
        name, config = checked.name, checked.config
        try:
            budget = Budget.start(
                checked.data.get("timeoutSeconds"), stopping, partial(_still_wanted, task.task_id)
            )
            when = _scheduled_at(task)
            task_id = task.task_id
            taken: Taken
            if isinstance(config, FilesystemConfig):
                taken = filesystem.take_backup(config, settings.roots, name, when, task_id, budget)
            else:
                taken = postgres.take_backup(config, settings.roots, name, when, task_id, budget)
        except Exception as exc:
            return _failure(task, "backup", name, exc, checked.secrets)
        log.info(
            "backup %s written (%d bytes)",
            taken.data_id,
            taken.size_bytes,
            extra={"backup": name, "workflow_id": task.workflow_id},
        )
        output: dict[str, Any] = {
            "dataId": taken.data_id,
            "dataSizeMB": round(taken.size_bytes / 1_000_000, 6),
            "checksum": taken.checksum,
        }
        if taken.row_counts is not None:
            output["rowCounts"] = dict(taken.row_counts)
        return completed(output)


def remove_task(settings: StorageWorkerSettings, task: TaskRun) -> TaskOutcome:
    """Delete one backup file; one that is already gone counts as removed."""
    with in_flight():
        checked = _checked_input(settings, task, "remove")
        if not isinstance(checked, TaskInput):
            return checked
        name, config = checked.name, checked.config
        try:
            data_id = check_data_id(checked.data.get("dataId"), SUFFIXES[config.kind])
            target = settings.roots.resolve(config.target, "target")
            removed = remove_data(target, data_id)
        except Exception as exc:
            return _failure(task, "remove", name, exc, checked.secrets)
        log.info(
            "backup %s %s",
            data_id,
            "removed" if removed else "was already gone",
            extra={"backup": name, "workflow_id": task.workflow_id},
        )
        return completed({"dataId": data_id, "removed": removed})


def verify_task(settings: StorageWorkerSettings, task: TaskRun) -> TaskOutcome:
    """Check that one backup restores; output verified, details, checkedAt (and checksum)."""
    with in_flight():
        read = _stored_input(settings, task, "verify", "verifyConfig", parse_verify_config)
        if not isinstance(read, StoredInput):
            return read
        name, config, data_id, secrets = read.name, read.config, read.data_id, read.secrets
        verify, expected, budget = read.run_config, read.expected, read.budget
        try:
            found: Verification
            if isinstance(config, FilesystemConfig):
                found = filesystem.verify_backup(config, settings.roots, data_id, expected, budget)
            else:
                recorded = parse_row_counts(read.data.get("rowCounts"))
                found = postgres.verify_backup(
                    config, settings.roots, data_id, expected, recorded, verify, budget
                )
        except Exception as exc:
            return _failure(task, "verify", name, exc, secrets)
        details = mask(found.details, secrets)
        context = {"backup": name, "workflow_id": task.workflow_id}
        if found.verified:
            log.info("backup %s verified: %s", data_id, details, extra=context)
        else:
            log.warning("backup %s failed verification: %s", data_id, details, extra=context)
        return completed(
            {
                "dataId": data_id,
                "verified": found.verified,
                "details": details,
                "checkedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "checksum": found.checksum,
            }
        )


def restore_task(settings: StorageWorkerSettings, task: TaskRun) -> TaskOutcome:
    """Restore one backup where restoreConfig says; the user's data is never left half-done."""
    with in_flight():
        read = _stored_input(settings, task, "restore", "restoreConfig", parse_restore_config)
        if not isinstance(read, StoredInput):
            return read
        name, config, data_id, secrets = read.name, read.config, read.data_id, read.secrets
        restore, expected, budget = read.run_config, read.expected, read.budget
        try:
            done: Restored
            if isinstance(config, FilesystemConfig):
                assert isinstance(restore, FilesystemRestore)
                still_wanted = partial(_still_wanted, task.task_id)
                done = filesystem.restore_backup(
                    config, restore, settings.roots, data_id, expected, budget, still_wanted
                )
            else:
                assert isinstance(config, PostgresConfig) and isinstance(restore, PostgresRestore)
                done = postgres.restore_backup(
                    config, restore, settings.roots, data_id, expected, budget
                )
        except Exception as exc:
            return _failure(task, "restore", name, exc, secrets)
        log.info(
            "backup %s restored into %s%s",
            data_id,
            mask(done.restored_to, secrets),
            " (replacing what was there)" if done.replaced else "",
            extra={"backup": name, "workflow_id": task.workflow_id},
        )
        output: dict[str, Any] = {
            "dataId": data_id,
            "restoredTo": mask(done.restored_to, secrets),
            "replaced": done.replaced,
            "checksum": done.checksum,
        }
        if done.entries is not None:
            output["entries"] = done.entries
        if done.leftover is not None:
            output["leftover"] = done.leftover
        return completed(output)


def _failure(
    task: TaskRun, action: str, name: object, exc: Exception, secrets: Sequence[str]
) -> TaskOutcome:
    """The outcome for an exception, its message masked (a DSN must never leak)."""
    context = {"backup": str(name), "workflow_id": task.workflow_id}
    if isinstance(exc, Stopping):
        log.info("%s interrupted: the worker is stopping; handed back", action, extra=context)
        return handed_back()
    reason = mask(str(exc), secrets)
    if isinstance(exc, TerminalError):
        log.warning("%s refused: %s", action, reason, extra=context)
        return terminal(reason)
    if isinstance(exc, RetryableError):
        log.warning("%s failed, Conductor will retry: %s", action, reason, extra=context)
        return failed(reason)
    details = mask("".join(traceback.format_exception(exc)), secrets)
    log.error("%s failed unexpectedly:\n%s", action, details, extra=context)
    return failed(f"unexpected {type(exc).__name__}: {reason}")


_conductor: Conductor | None = None


def _still_wanted(task_id: str) -> bool:
    """Whether Conductor still waits for this task (its run was not terminated meanwhile).

    When Conductor cannot say, the backup is kept: a record may then be missing, which
    operators see, rather than a good backup lost.
    """
    global _conductor
    if _conductor is None:
        _conductor = ConductorClient(Settings.from_env().conductor_api_url, timeout=5.0)
    try:
        return _conductor.get_task(task_id).status is not TaskStatus.CANCELED
    except BacktorError as exc:
        log.warning("cannot ask Conductor about task %s (%s); keeping the backup", task_id, exc)
        return True


def _scheduled_at(task: TaskRun) -> datetime:
    """When Conductor scheduled the task: the same on every delivery of it."""
    return task.scheduled_time or datetime.now(UTC)


def storage_settings(
    kinds: Sequence[str], allow_roots: Sequence[str], env_roots: Sequence[str] = ()
) -> StorageWorkerSettings:
    """Check the command line before anything starts; ValueError says what is wrong.

    `allow_roots` (--allow-root) win; else `env_roots` (Settings.storage_roots), whose
    faults are SettingErrors so that the message names BACKTOR_STORAGE_ROOTS.
    """
    served = tuple(sorted(set(kinds)))
    if not served:
        raise ValueError(f"name the kinds to serve: {' '.join(KINDS)} (e.g. --kind filesystem)")
    unknown = [k for k in served if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(unknown)} (known: {', '.join(KINDS)})")
    if "postgres" in served and not postgres.pg_dump_available():
        raise ValueError("kind postgres needs pg_dump on PATH (Debian: postgresql-client)")
    if "postgres" in served and not postgres.pg_restore_available():
        raise ValueError("kind postgres needs pg_restore on PATH (Debian: postgresql-client)")
    if allow_roots or not env_roots:
        return StorageWorkerSettings(served, AllowedRoots.from_paths(allow_roots))
    try:
        roots = AllowedRoots.from_paths(env_roots)
    except ValueError as exc:
        raise SettingError("BACKTOR_STORAGE_ROOTS", os.pathsep.join(env_roots), str(exc)) from None
    return StorageWorkerSettings(served, roots)


def run_storage_worker(storage: StorageWorkerSettings, settings: Settings, threads: int) -> int:
    """Poll the storage tasks until SIGTERM or SIGINT; a running backup is handed back."""
    # Imported here: importing conductor-python's automator switches multiprocessing to spawn.
    from backtor.conductor import sdk
    from backtor.workers.runner import stop_on_signals

    configure_logging(settings.log_level, settings.log_format)
    stop = stop_on_signals()

    def worker(task_type: str, handler: sdk.Handler) -> sdk.StoppableWorker:
        return sdk.StoppableWorker(
            task_type,
            handler,
            stopping=stopping,
            on_spawn=on_runner_spawn,
            poll_interval=POLL_INTERVAL_MS,
            thread_count=threads,
            lease_extend_enabled=True,  # a long backup keeps its task past responseTimeout
        )

    handler = sdk.task_handler(
        settings.conductor_api_url,
        [
            worker(BACKUP, partial(backup_task, storage)),
            worker(REMOVE, partial(remove_task, storage)),
            worker(VERIFY, partial(verify_task, storage)),
            worker(RESTORE, partial(restore_task, storage)),
        ],
    )
    handler.start_processes()
    log.info(
        "storage worker serving %s under %s; polling backup, remove, verify, restore at %s",
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
