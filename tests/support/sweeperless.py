"""For tests that kill a worker inside Backtor's own task: a Conductor whose sweeper is off
(so only Backtor's own repair can finish the task) and a lock that holds the dead worker's
write until it is killed."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import ROOT
from tests.support.conductor import workflow
from tests.support.net import free_port
from tests.support.waiting import wait_until

T = TypeVar("T")

SCRIPT = ROOT / "scripts" / "conductor"
# Conductor 3.32's sweepers (the current one, the legacy one, and the reconciler that drives
# the legacy one), off: Spring properties given as JVM system properties.
SWEEPER_OFF = (
    "-Dconductor.app.sweeper.enabled=false",
    "-Dconductor.app.legacy.sweeper.enabled=false",
    "-Dconductor.workflow-reconciler.enabled=false",
)


class SweeperlessConductor:
    """A Conductor server of the test's own (scripts/conductor, the session's backend), its
    sweeper off."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        default = re.search(r'JAVA_OPTS_DEFAULT="([^"]*)"', SCRIPT.read_text())
        assert default is not None, f"no JAVA_OPTS_DEFAULT in {SCRIPT}"
        opts = os.environ.get("CONDUCTOR_JAVA_OPTS") or default.group(1)
        env = {**os.environ, "CONDUCTOR_JAVA_OPTS": " ".join((opts, *SWEEPER_OFF))}
        subprocess.run(
            [str(SCRIPT), "start", "--port", str(self.port), "--dir", str(self.directory)],
            check=True,
            env=env,
        )

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", "--dir", str(self.directory), "--drop"], check=False)


class BackupTableLock:
    """`LOCK TABLE backup IN SHARE MODE` held in a transaction of the test's own engine:
    every insert into `backup` waits until it is released."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(database_url, poolclass=NullPool)
        self.connection: Connection | None = None
        self.pid = 0
        self.taken_at = 0.0
        self.held_s = 0.0

    def take(self) -> None:
        connection = self.engine.connect()
        self.pid = int(connection.scalar(text("SELECT pg_backend_pid()")) or 0)
        connection.execute(text("LOCK TABLE backup IN SHARE MODE"))
        self.connection = connection
        self.taken_at = time.monotonic()

    def release(self) -> None:
        if self.connection is None:
            return
        self.connection.rollback()
        self.held_s = time.monotonic() - self.taken_at
        self.connection.close()
        self.connection = None

    def waiting(self) -> list[str]:
        """The statements waiting on this lock."""
        with self.engine.connect() as connection:
            return [
                str(query)
                for query in connection.scalars(
                    text(
                        "SELECT query FROM pg_stat_activity "
                        "WHERE CAST(:pid AS integer) = ANY(pg_blocking_pids(pid))"
                    ),
                    {"pid": self.pid},
                )
            ]


@contextmanager
def backup_table_lock(database_url: str) -> Iterator[BackupTableLock]:
    lock = BackupTableLock(database_url)
    try:
        yield lock
    finally:
        lock.release()
        lock.engine.dispose()


def poll_for(probe: Callable[[], T], *, timeout: float, interval: float = 0.1) -> T | None:
    """wait_until, but None on timeout: the figures are printed before any assertion."""
    try:
        return wait_until(probe, timeout=max(timeout, 0.0), interval=interval)
    except AssertionError:
        return None


def after_ms(moment_ms: Any, since: float) -> float | None:
    return round(int(moment_ms) / 1000 - since, 3) if moment_ms else None


def tasks_of(conductor_url: str, workflow_id: str, task_type: str) -> list[dict[str, Any]]:
    run = workflow(conductor_url, workflow_id)
    return [t for t in run.get("tasks", []) if t.get("taskType") == task_type]
