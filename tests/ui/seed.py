"""Specs and backups for the /ui tests, made the way the running system makes them.

Specs go through the REST API (`POST`/`PUT /backup`, the pin route), as a user makes them.
Backups go through the scheduler's own recording code, minute by minute on a settable
clock: `record_taken` for each backup a storage worker reported, `apply_plan` for the
retention run that follows (it marks the plan's removals REMOVING, or EXPIRING under a
removal delay), then the removal outbox's steps (`promote_expired` for the EXPIRING ones
whose delay has passed, a remove_backup workflow id, `record_removed`). Only what
Conductor would have done (the workflow ids) and what the tick leaves behind (next fire,
last skip) are written directly.

`demo` is `make run`'s demo spec (scripts/run): the same body, ten minutes of its life.
`www` and `orders` are the README's examples with a history; `archive` is paused, with a
reason; `logs` removes after a delay, so some of its backups are EXPIRING; `events` holds
100,000 backups, to show that a page stays bounded. Verifications and restores go through
backtor.scheduling.restores (`claim`, then the workflow id Conductor would have given, then
`record_end` with what the storage worker output): `www`'s newest backup is VERIFIED, an
older one FAILED (its details hold markup), one was restored and one is being verified;
`orders`' newest backups were never verified, an older one was.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from backtor.conductor.payloads import WorkflowStatus
from backtor.core.policy import RetentionPolicy
from backtor.core.retention import BackupRecord, plan_retention
from backtor.db.models import Backup, BackupSpec, BackupStatus, SkipReason
from backtor.scheduling import restores
from backtor.scheduling.recording import (
    TakenBackup,
    apply_plan,
    record_failed,
    record_removed,
    record_taken,
)
from backtor.scheduling.removals import promote_expired
from backtor.storage.output import backup_file_name

DEMO_DIR = "/srv/backtor/data/demo"  # make run's $DATA_DIR/demo, here only a path in a config
BULK_BACKUPS = 100_000


class Clock:
    """The app's clock (`create_app(clock=...)`): the seed moves it, the pages read it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def demo_body() -> dict[str, Any]:
    """The body scripts/run posts for the demo spec (tests check the script still does)."""
    config = {"kind": "filesystem", "source": DEMO_DIR + "/source", "target": DEMO_DIR + "/store"}
    return {
        "name": "demo",
        "backupCronString": "0 * * * * *",
        "retentionMinutely": "3",
        "workerConfig": json.dumps(config),
    }


@dataclass
class Seeded:
    """What the tests compare the pages with."""

    view_time: datetime
    pinned: dict[str, int] = field(default_factory=dict)  # spec -> the pinned backup's id
    failed: dict[str, list[int]] = field(default_factory=dict)  # spec -> FAILED/TIMED_OUT ids
    remove_failed: dict[str, int] = field(default_factory=dict)
    hostile_error: str = ""
    paused_reason: str = ""  # archive's: it holds markup
    # spec -> backup id -> (verifyStatus, details) of the verifications seeded
    verdicts: dict[str, dict[int, tuple[str, str]]] = field(default_factory=dict)
    restored: dict[str, int] = field(default_factory=dict)  # spec -> a restored backup
    verifying: dict[str, int] = field(default_factory=dict)  # spec -> a verify under way


class Seeder:
    def __init__(self, base_url: str, clock: Clock, sessions: sessionmaker[Session]) -> None:
        self.base_url = base_url
        self.clock = clock
        self.sessions = sessions
        self.http = requests.Session()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = self.http.request(method, f"{self.base_url}{path}", json=body, timeout=30)
        assert answer.status_code < 300, (method, path, answer.status_code, answer.text)
        return answer.json() if answer.content else None

    @contextmanager
    def spec(self, name: str) -> Iterator[tuple[Session, BackupSpec]]:
        with self.sessions() as session:
            spec = session.scalars(select(BackupSpec).where(BackupSpec.name == name)).one()
            yield session, spec
            session.commit()

    def take(
        self,
        name: str,
        fire: datetime,
        *,
        took: timedelta = timedelta(seconds=2),
        size_mb: float = 0.02,
        max_removals: int = 20,
        remove: bool = True,
    ) -> int:
        """One backup taken at `fire`, its retention run, and the removals it started
        (finished at once unless `remove` is false). Returns the backup's id."""
        self.clock.now = fire + took + timedelta(seconds=1)
        task = uuid.uuid4().hex
        with self.spec(name) as (session, spec):
            backup = record_taken(
                session,
                spec,
                TakenBackup(
                    spec_name=name,
                    task_id=task,
                    workflow_id=str(uuid.uuid4()),
                    data_id=backup_file_name(name, fire, task, ".tar.gz"),
                    size_mb=size_mb,
                    scheduled_at=fire,
                    start_time=fire + timedelta(milliseconds=300),
                    end_time=fire + took,
                ),
            )
            backup_id = backup.id
            apply_plan(session, spec, self.clock.now, max_removals)
            promote_expired(session, self.clock.now, max_removals)
            # What the removal outbox starts: the spec's REMOVING backups without a run yet
            # (the plan's removals, or, under a delay, the EXPIRING ones it just promoted).
            removals = list(
                session.scalars(
                    select(Backup.id).where(
                        Backup.spec_id == spec.id,
                        Backup.status == BackupStatus.REMOVING.value,
                        Backup.remove_workflow_id.is_(None),
                    )
                )
            )
        self._remove(removals, finish=remove)
        return backup_id

    def _remove(self, ids: list[int], *, finish: bool) -> None:
        """The removal outbox: a remove_backup per backup, then (if `finish`) its record."""
        if not ids:
            return
        with self.sessions() as session:
            for backup_id in ids:
                session.execute(
                    update(Backup)
                    .where(Backup.id == backup_id)
                    .values(remove_workflow_id=str(uuid.uuid4()), remove_attempts=1)
                )
                if finish:
                    record_removed(
                        session, backup_id, self.clock.now + timedelta(seconds=20), open_run=None
                    )
            session.commit()

    def fail(self, name: str, fire: datetime, status: BackupStatus, error: str) -> int:
        self.clock.now = fire + timedelta(minutes=5)
        workflow = str(uuid.uuid4())
        with self.spec(name) as (session, spec):
            record_failed(
                session,
                spec,
                workflow_id=workflow,
                status=status,
                scheduled_at=fire,
                start_time=fire,
                end_time=self.clock.now,
                error=error,
            )
            session.flush()
            found = session.scalar(select(Backup.id).where(Backup.create_workflow_id == workflow))
        assert found is not None
        return found

    def start_run(self, name: str, backup_id: int, kind: restores.Kind) -> str:
        """A restore or verification requested (claimed) and started: RUNNING."""
        workflow = str(uuid.uuid4())
        with self.spec(name) as (session, spec):
            job = restores.claim(session, spec, backup_id, kind, self.clock.now)
            session.execute(
                update(Backup)
                .where(Backup.id == backup_id)
                .values({kind.status: restores.RUNNING, kind.workflow_id: workflow})
            )
            assert job.backup_id == backup_id
        return workflow

    def end_run(
        self,
        backup_id: int,
        kind: restores.Kind,
        workflow: str,
        status: WorkflowStatus,
        output: dict[str, Any],
        reason: str | None = None,
    ) -> None:
        with self.sessions.begin() as session:
            assert restores.record_end(
                session, kind, backup_id, workflow, status, output, reason, self.clock.now
            )

    def verify(self, name: str, backup_id: int, verified: bool, details: str) -> None:
        workflow = self.start_run(name, backup_id, restores.VERIFY)
        output = {"verified": verified, "details": details}
        self.end_run(backup_id, restores.VERIFY, workflow, WorkflowStatus.COMPLETED, output)

    def tick_leaves(self, name: str, **values: Any) -> None:
        """What the scheduler's tick writes on the spec (next fire, last skip, running run)."""
        with self.spec(name) as (_session, spec):
            for key, value in values.items():
                setattr(spec, key, value)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def seed_demo(seeder: Seeder, view: datetime) -> None:
    """Ten minutes of make run's demo: a backup a minute, the newest 3 kept (minutely 3)."""
    last = _minute(view)
    seeder.clock.now = last - timedelta(minutes=10) + timedelta(seconds=20)
    seeder.api("POST", "/backup", demo_body())
    fires = [last - timedelta(minutes=9 - i) for i in range(10)]
    for index, fire in enumerate(fires):
        # The last removal is still under way when the page is looked at.
        seeder.take("demo", fire, remove=index < len(fires) - 1)
    seeder.tick_leaves("demo", next_fire_at=last + timedelta(minutes=1))


def seed_www(seeder: Seeder, view: datetime, seeded: Seeded) -> None:
    """The README's `www`: the derived daily schedule, 60 days of history, a pin, a failed
    backup (its error holds markup), a removal that keeps failing, then a policy edit
    (daily 7 -> 3) whose extra removals wait for the next retention run: of the four
    days it drops, at most a Saturday (weekly) and a month's end (monthly) stay kept."""
    body: dict[str, Any] = {
        "name": "www",
        "workerConfig": json.dumps(
            {"kind": "filesystem", "source": "/srv/www", "target": "/backups/www"}
        ),
        "retentionDaily": "7",
        "retentionWeekly": "4",
        "retentionMonthly": "3",
        "retentionYearly": "0",
    }
    day = view.date()
    fires = [
        datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC) - timedelta(days=k)
        for k in range(60, 0, -1)
    ]
    seeder.clock.now = fires[0] - timedelta(hours=3)
    seeder.api("POST", "/backup", body)
    seeded.hostile_error = (
        "<script>alert('x')</script> tar: /srv/www/uploads: Cannot open: Permission denied"
    )
    for index, fire in enumerate(fires):
        if index == len(fires) - 12:
            seeded.failed["www"] = [
                seeder.fail("www", fire, BackupStatus.FAILED, seeded.hostile_error)
            ]
            continue
        backup_id = seeder.take("www", fire, took=timedelta(minutes=3), size_mb=812.4)
        if index == 14:  # pinned while it was held: kept ever since, outside the policy
            seeder.api("PUT", f"/backup/www/materialized/{backup_id}/pin")
            seeded.pinned["www"] = backup_id
    # A removal that failed three times: REMOVE_FAILED, still retried (scheduling.removals).
    with seeder.sessions() as session:
        stuck = session.scalar(
            select(Backup.id)
            .join(BackupSpec, BackupSpec.id == Backup.spec_id)
            .where(BackupSpec.name == "www", Backup.status == BackupStatus.REMOVED.value)
            .order_by(Backup.scheduled_at.desc())
            .limit(1)
        )
        assert stuck is not None
        session.execute(
            update(Backup)
            .where(Backup.id == stuck)
            .values(
                status=BackupStatus.REMOVE_FAILED.value,
                removed_at=None,
                remove_attempts=3,
                last_error="remove: /backups/www: Read-only file system",
            )
        )
        session.commit()
    seeded.remove_failed["www"] = stuck
    seeder.clock.now = view - timedelta(hours=2)
    seeder.api("PUT", "/backup/www", {**body, "retentionDaily": "3"})
    seeder.tick_leaves("www", next_fire_at=fires[-1] + timedelta(days=1))


def seed_orders(seeder: Seeder, view: datetime, seeded: Seeded) -> None:
    """The README's `orders`, hourly: no success for 9 hours (a failure, a time-out, then a
    backup that hangs, so the next fires are skipped): overdue."""
    body = {
        "name": "orders",
        "backupCronString": "0 0 * * * *",
        "workerConfig": json.dumps(
            {
                "kind": "postgres",
                "dsn": "postgresql://app:secret@db/orders",
                "target": "/backups/orders",
            }
        ),
        "retentionHourly": "24",
        "retentionDaily": "7",
    }
    hour = view.replace(minute=0, second=0, microsecond=0)
    seeder.clock.now = hour - timedelta(days=3, minutes=10)
    seeder.api("POST", "/backup", body)
    for k in range(72, 9, -1):
        seeder.take("orders", hour - timedelta(hours=k), took=timedelta(seconds=40), size_mb=96.0)
    seeded.failed["orders"] = [
        seeder.fail(
            "orders",
            hour - timedelta(hours=8),
            BackupStatus.FAILED,
            'pg_dump: error: connection to server at "db" failed: timeout expired',
        ),
        seeder.fail("orders", hour - timedelta(hours=7), BackupStatus.TIMED_OUT, "timed out"),
    ]
    seeder.tick_leaves(
        "orders",
        running_create_workflow_id=str(uuid.uuid4()),
        last_skip_at=hour,
        last_skip_reason=SkipReason.RUNNING.value,
        next_fire_at=hour + timedelta(hours=1),
    )


def seed_archive(seeder: Seeder, view: datetime, seeded: Seeded) -> None:
    """A monthly spec with a year of backups, paused ten days ago, with a reason that holds
    markup (shown as text)."""
    body = {
        "name": "archive",
        "backupCronString": "0 0 3 1 * *",
        "workerConfig": json.dumps(
            {"kind": "filesystem", "source": "/srv/archive", "target": "/backups/archive"}
        ),
        "retentionDaily": "0",
        "retentionWeekly": "0",
        "retentionMonthly": "12",
        "retentionYearly": "3",
    }
    first = datetime(view.year - 1, view.month, 1, 3, tzinfo=UTC)
    seeder.clock.now = first - timedelta(days=2)
    seeder.api("POST", "/backup", body)
    month = first
    while month < view - timedelta(days=10):
        seeder.take("archive", month, took=timedelta(minutes=20), size_mb=20480.0)
        month = (month + timedelta(days=32)).replace(day=1)
    seeder.tick_leaves("archive", next_fire_at=month)  # as the tick left it: not due yet
    seeder.clock.now = view - timedelta(days=10)
    seeded.paused_reason = (
        'storage move <b>INC-4711</b> & "archive" volume <script>alert(1)</script>: '
        "resume after the new array is mounted"
    )
    seeder.api(
        "PUT", "/backup/archive", {**body, "enabled": 0, "pausedReason": seeded.paused_reason}
    )


LOGS_DELAY = timedelta(hours=5)


def seed_logs(seeder: Seeder, view: datetime) -> None:
    """`logs`: hourly for ten hours, the newest 3 kept, under a removal delay of 5 hours.
    The backups retention marked in the last five hours are EXPIRING (their removal not
    started), the older ones REMOVED; then a policy edit (hourly 3 -> 2) leaves a COMPLETED
    backup that the plan removes at the next retention run (a removal candidate)."""
    body: dict[str, Any] = {
        "name": "logs",
        "backupCronString": "0 0 * * * *",
        "workerConfig": json.dumps(
            {"kind": "filesystem", "source": "/var/log/app", "target": "/backups/logs"}
        ),
        "retentionMinutely": "0",
        "retentionHourly": "3",
        "retentionDaily": "0",
        "retentionWeekly": "0",
        "retentionMonthly": "0",
        "retentionYearly": "0",
        "removalDelaySeconds": int(LOGS_DELAY.total_seconds()),
    }
    hour = view.replace(minute=0, second=0, microsecond=0)
    fires = [hour - timedelta(hours=k) for k in range(9, -1, -1)]
    seeder.clock.now = fires[0] - timedelta(minutes=10)
    seeder.api("POST", "/backup", body)
    for fire in fires:
        seeder.take("logs", fire, took=timedelta(seconds=5), size_mb=4.2)
    seeder.clock.now = view
    seeder.api("PUT", "/backup/logs", {**body, "retentionHourly": "2"})
    seeder.tick_leaves("logs", next_fire_at=hour + timedelta(hours=1))


def seed_bulk(seeder: Seeder, view: datetime) -> None:
    """`events`: BULK_BACKUPS backups, every 5 minutes, as retention left them (the plan's
    keeps COMPLETED, the rest REMOVED, but the newest 40 removals still COMPLETED: the cap)."""
    fields = {
        "retentionMinutely": "0",
        "retentionHourly": "48",
        "retentionDaily": "30",
        "retentionWeekly": "8",
        "retentionMonthly": "12",
        "retentionYearly": "2",
    }
    body = {
        "name": "events",
        "backupCronString": "0 */5 * * * *",
        "workerConfig": json.dumps({"kind": "filesystem", "source": "/srv/ev", "target": "/b/ev"}),
        **fields,
    }
    last = _minute(view) - timedelta(minutes=view.minute % 5)
    fires = [last - timedelta(minutes=5 * k) for k in range(BULK_BACKUPS - 1, -1, -1)]
    seeder.clock.now = fires[0] - timedelta(minutes=1)
    seeder.api("POST", "/backup", body)
    plan = plan_retention(
        [BackupRecord(str(i), fire) for i, fire in enumerate(fires)],
        RetentionPolicy.from_fields(fields),
        ZoneInfo("UTC"),
    )
    removed = sorted((int(i) for i in plan.remove_ids), reverse=True)
    still_held = set(removed[:40])
    with seeder.spec("events") as (session, spec):
        rows = []
        for i, fire in enumerate(fires):
            gone = str(i) in plan.remove_ids and i not in still_held
            rows.append(
                {
                    "spec_id": spec.id,
                    "status": (BackupStatus.REMOVED if gone else BackupStatus.COMPLETED).value,
                    "scheduled_at": fire,
                    "start_time": fire,
                    "end_time": fire + timedelta(seconds=4),
                    "size_mb": 1.5,
                    "data_id": f"events-{fire:%Y%m%dT%H%M%SZ}-{i:06d}.tar.gz",
                    "create_workflow_id": f"events-create-{i}",
                    "backup_task_id": f"events-task-{i}",
                    "remove_workflow_id": f"events-remove-{i}" if gone else None,
                    "removed_at": fire + timedelta(minutes=6) if gone else None,
                    "tags": "",
                    "pinned": False,
                }
            )
        session.execute(insert(Backup), rows)
    seeder.tick_leaves("events", next_fire_at=last + timedelta(minutes=5))


def _held(seeder: Seeder, name: str) -> list[int]:
    """The spec's COMPLETED backups, newest first."""
    with seeder.sessions() as session:
        return list(
            session.scalars(
                select(Backup.id)
                .join(BackupSpec, BackupSpec.id == Backup.spec_id)
                .where(BackupSpec.name == name, Backup.status == BackupStatus.COMPLETED.value)
                .order_by(Backup.end_time.desc())
            )
        )


def seed_verifications(seeder: Seeder, view: datetime, seeded: Seeded) -> None:
    """www: the newest backup VERIFIED an hour ago, an older one FAILED (markup in its
    details), one restored, one being verified. orders: only an older backup verified."""
    www = _held(seeder, "www")
    seeder.clock.now = view - timedelta(hours=5)
    damaged = "gzip: <b>invalid compressed data</b> -- crc error at byte 1048576"
    seeder.verify("www", www[2], False, damaged)
    workflow = seeder.start_run("www", www[1], restores.RESTORE)
    seeder.clock.now = view - timedelta(hours=4)
    output = {"restoredTo": "/srv/restore/www", "replaced": False}
    seeder.end_run(www[1], restores.RESTORE, workflow, WorkflowStatus.COMPLETED, output)
    seeder.clock.now = view - timedelta(hours=1)
    seeder.verify("www", www[0], True, "archive read whole; sha256 matches")
    seeder.start_run("www", www[3], restores.VERIFY)
    seeded.verdicts["www"] = {www[0]: ("VERIFIED", "archive read whole; sha256 matches")}
    seeded.verdicts["www"][www[2]] = ("FAILED", damaged)
    seeded.restored["www"] = www[1]
    seeded.verifying["www"] = www[3]
    orders = _held(seeder, "orders")
    seeder.clock.now = view - timedelta(hours=30)
    seeder.verify("orders", orders[5], True, "pg_restore --list: 14 entries")
    seeded.verdicts["orders"] = {orders[5]: ("VERIFIED", "pg_restore --list: 14 entries")}


def seed_all(seeder: Seeder, view: datetime) -> Seeded:
    seeded = Seeded(view)
    seed_demo(seeder, view)
    seed_www(seeder, view, seeded)
    seed_orders(seeder, view, seeded)
    seed_archive(seeder, view, seeded)
    seed_logs(seeder, view)
    seed_bulk(seeder, view)
    seed_verifications(seeder, view, seeded)
    seeder.clock.now = view
    return seeded
