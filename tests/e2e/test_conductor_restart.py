"""Conductor restarted under Backtor: scheduling resumes by itself, and no fire (no fire
time) gets a second create_backup across the outage.

This test runs its own Conductor server (the session's one must not be restarted) and
restarts it on the same SQLite state, as an operator's restart would.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backtor.db.migrate import upgrade_to_head
from tests.conftest import ROOT
from tests.e2e.conftest import Stack, assert_each_fire_started_once
from tests.support import processes
from tests.support.net import free_port
from tests.support.storage import FileStorageWorker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SCRIPT = str(ROOT / "scripts" / "conductor")


class OwnConductor:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        subprocess.run(
            [SCRIPT, "start", "--port", str(self.port), "--dir", str(self.directory)], check=True
        )

    def stop(self, *, drop: bool = False) -> None:
        """Stop the server; `drop` also deletes its database (PostgreSQL backend)."""
        extra = ["--drop"] if drop else []
        subprocess.run([SCRIPT, "stop", "--dir", str(self.directory), *extra], check=False)


@pytest.fixture
def own_conductor(tmp_path: Path) -> Iterator[OwnConductor]:
    server = OwnConductor(tmp_path / "conductor")
    server.start()
    try:
        yield server
    finally:
        server.stop(drop=True)


def test_scheduling_resumes_after_a_conductor_restart(
    own_conductor: OwnConductor, postgres_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(postgres_url)
    env = processes.backtor_env(postgres_url, own_conductor.url)
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    with (
        processes.api_server(env, logs / "api.log") as api,
        FileStorageWorker(own_conductor.url, tmp_path / "store", prefix=prefix) as storage,
        processes.workers(env, logs),
    ):
        stack = Stack(api, own_conductor.url, postgres_url, env, storage, logs, prefix)
        name = stack.create("restart", backupCronString="*/2 * * * * *")
        wait_until(lambda: len(stack.creates(name)) >= 2, timeout=60, what="backups before")
        own_conductor.stop()
        before = len(stack.backups(name))
        own_conductor.start()
        wait_until(
            lambda: len(stack.backups(name)) >= before + 3,
            # A task whose result was lost in the outage is delivered again after its response
            # timeout (apply_retention: 120 s) and Conductor's sweep.
            timeout=240,
            what="backups after the restart",
        )
        stack.update(name, enabled=0)
        wait_until(
            lambda: not [w for w in stack.creates(name) if w["status"] == "RUNNING"],
            timeout=60,
            what="the last backup",
        )
        wait_until(
            lambda: stack.live_data_ids(name) == storage.files(),
            timeout=30,
            what="the records and the stored files to agree",
        )
        # At most once across the outage: a start whose answer the outage swallowed was
        # adopted on retry, never started a second time.
        assert_each_fire_started_once(stack, name)
