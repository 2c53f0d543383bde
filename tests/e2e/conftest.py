"""An end-to-end stack per test: a fresh PostgreSQL database, the real Conductor server,
Backtor's API and worker processes, and the file storage worker."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from backtor.db.migrate import upgrade_to_head
from backtor.db.models import BackupSpec, Fire
from tests.support import processes
from tests.support.conductor import stop_open_runs, workflows
from tests.support.storage import FileStorageWorker
from tests.support.sweeperless import SweeperlessConductor


@dataclass
class Stack:
    api: str
    conductor: str
    database_url: str
    env: dict[str, str]
    storage: FileStorageWorker
    logs: Path
    prefix: str
    names: list[str] = field(default_factory=list)

    def name(self, label: str) -> str:
        name = f"{self.prefix}-{label}"
        self.names.append(name)
        return name

    def create(self, label: str, **fields: Any) -> str:
        name = self.name(label)
        body = {"name": name, "workerConfig": '{"kind": "test"}', **fields}
        answer = requests.post(f"{self.api}/backup", json=body, timeout=10)
        assert answer.status_code == 201, answer.text
        return name

    def spec(self, name: str) -> dict[str, Any]:
        return dict(requests.get(f"{self.api}/backup/{name}", timeout=10).json())

    def update(self, name: str, **fields: Any) -> None:
        body = {k: v for k, v in self.spec(name).items() if k in WRITABLE} | fields
        answer = requests.put(f"{self.api}/backup/{name}", json=body, timeout=10)
        assert answer.status_code == 200, answer.text

    def backups(self, name: str, **params: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.api}/backup/{name}/materialized", params=params, timeout=10)
        answer.raise_for_status()
        return list(answer.json())

    def live_data_ids(self, name: str) -> set[str]:
        """Data Backtor believes is stored: anything not removed and not failed."""
        return {
            b["dataId"]
            for b in self.backups(name)
            if b["dataId"] and b["status"] in ("COMPLETED", "EXPIRING", "REMOVING", "REMOVE_FAILED")
        }

    def creates(self, name: str) -> list[dict[str, Any]]:
        return workflows(self.conductor, "create_backup", name)

    def removes(self, name: str) -> list[dict[str, Any]]:
        return workflows(self.conductor, "remove_backup", name)

    def fires(self, name: str) -> list[Fire]:
        """The spec's fire ledger, oldest first."""
        engine = create_engine(self.database_url)
        try:
            with Session(engine) as session:
                spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == name))
                return list(
                    session.scalars(
                        select(Fire).where(Fire.spec_id == spec_id).order_by(Fire.scheduled_at)
                    )
                )
        finally:
            engine.dispose()

    def log_tail(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.logs.glob("*.log")))


def assert_each_fire_started_once(stack: Stack, name: str) -> None:
    """At most one create_backup per fire and per fire time, and the ledger agrees with
    Conductor: each STARTED fire has exactly its workflow, and no workflow lacks its fire."""
    runs = stack.creates(name)
    per_fire = Counter(w["input"].get("fireId") for w in runs)
    per_time = Counter(w["input"].get("scheduledTime") for w in runs)
    assert runs, "no create_backup at all"
    assert max(per_fire.values()) == 1, f"a fire started twice: {per_fire.most_common(3)}"
    assert max(per_time.values()) == 1, f"a fire time started twice: {per_time.most_common(3)}"
    started = {f.id: f.workflow_id for f in stack.fires(name) if f.status == "STARTED"}
    assert set(per_fire) == set(started), "a workflow without its fire, or a fire without one"
    assert set(started.values()) == {w["workflowId"] for w in runs}


WRITABLE = {
    "name",
    "enabled",
    "fromDate",
    "toDate",
    "backupCronString",
    "timezone",
    "workerConfig",
    "timeoutSeconds",
    "misfireGraceSeconds",
    "retentionMinutely",
    "retentionHourly",
    "retentionDaily",
    "retentionWeekly",
    "retentionMonthly",
    "retentionYearly",
    # issue 12's fields (only those GET returns are sent back)
    "overlapPolicy",
    "pausedReason",
    "autoPauseAfterFailures",
    "removalDelaySeconds",
    "retentionKeepWithin",
    "retentionLast",
    "allowKeepNewestOnly",
    "notifyUrl",
    "jitterSeconds",  # issue 14
    "verifyCronString",  # issue 11, scheduled verification
    "verifySampleRate",
}


@pytest.fixture
def stack_env(postgres_url: str, conductor_url: str) -> dict[str, str]:
    upgrade_to_head(postgres_url)
    return processes.backtor_env(postgres_url, conductor_url, BACKTOR_REMOVAL_RETRY_SECONDS="1")


@pytest.fixture
def stack(
    stack_env: dict[str, str], conductor_url: str, postgres_url: str, tmp_path: Path
) -> Iterator[Stack]:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        processes.api_server(stack_env, logs / "api.log") as api,
        FileStorageWorker(conductor_url, tmp_path / "store", prefix=prefix) as storage,
    ):
        stack = Stack(api, conductor_url, postgres_url, stack_env, storage, logs, prefix)
        try:
            yield stack
        finally:
            for name in stack.names:
                for kind in ("create_backup", "remove_backup"):
                    stop_open_runs(conductor_url, kind, name)


@pytest.fixture
def sweeperless_stack(postgres_url: str, tmp_path: Path) -> Iterator[Stack]:
    """The stack on a Conductor of the test's own whose sweeper is off: only Backtor's own
    repair can finish a task a killed worker held (tests/support/sweeperless.py)."""
    server = SweeperlessConductor(tmp_path / "conductor")
    server.start()
    try:
        upgrade_to_head(postgres_url)
        env = processes.backtor_env(postgres_url, server.url, BACKTOR_REMOVAL_RETRY_SECONDS="1")
        prefix = f"e2e{uuid.uuid4().hex[:8]}"
        logs = tmp_path / "logs"
        logs.mkdir()
        with (
            processes.api_server(env, logs / "api.log") as api,
            FileStorageWorker(server.url, tmp_path / "store", prefix=prefix) as storage,
        ):
            yield Stack(api, server.url, postgres_url, env, storage, logs, prefix)
    finally:
        server.stop()
