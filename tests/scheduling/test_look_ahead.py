"""The pass's look-ahead: an idle pass reads one row of flags, not every stage's tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, update
from sqlalchemy.engine import Engine

from backtor.db.models import Backup, BackupSpec, BackupStatus, Fire, FireStatus, Notice
from backtor.scheduling import tick
from backtor.scheduling.outcomes import reconcile_fires
from backtor.scheduling.removals import reconcile_removals, start_pending_removals
from backtor.scheduling.restores import follow_runs
from backtor.scheduling.tick import run_tick
from backtor.scheduling.verifications import start_scheduled_verifications
from tests.scheduling.conftest import Core


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", note)


def test_an_idle_pass_reads_no_stage_table(core: Core) -> None:
    core.add_spec("hourly", cron="0 0 * * * *")
    run_tick(core.services)  # the first pass of a new spec may write its next fire time
    core.advance(1)
    with statements() as seen:
        report = run_tick(core.services)
    assert report.ran and report.started == 0
    # Four transactions: the lease; K, the due specs and the look-ahead; the PENDING
    # fires; the next due time and the release. No stage opened one of its own.
    assert [s for s in seen if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"] * 4, seen
    assert len([s for s in seen if not s.startswith(("BEGIN", "COMMIT"))]) <= 7, seen
    reads = [s for s in seen if not s.startswith("SELECT EXISTS")]  # not the look-ahead
    assert not [s for s in reads if "FROM notice" in s or "FROM backup " in s], seen


def _spec_id(core: Core) -> int:
    with core.services.db() as session:
        spec_id = session.scalar(BackupSpec.__table__.select().with_only_columns(BackupSpec.id))
    assert spec_id is not None
    return spec_id


def _backup(core: Core, **fields: Any) -> None:
    with core.services.db.begin() as session:
        session.execute(
            insert(Backup).values(
                spec_id=_spec_id(core),
                status=fields.pop("status", BackupStatus.COMPLETED.value),
                data_id="data-1",
                scheduled_at=core.now() - timedelta(hours=1),
                **fields,
            )
        )


def _fire(core: Core, **fields: Any) -> None:
    with core.services.db.begin() as session:
        session.execute(
            insert(Fire).values(
                spec_id=_spec_id(core),
                scheduled_at=core.now() - timedelta(minutes=5),
                status=FireStatus.STARTED.value,
                workflow_id="run-1",
                created_at=core.now() - timedelta(minutes=5),
                started_at=core.now() - timedelta(minutes=5),
                **fields,
            )
        )


def _spec(core: Core, **values: Any) -> None:
    with core.services.db.begin() as session:
        session.execute(update(BackupSpec).values(**values))


def _notice(core: Core, status: str) -> None:
    with core.services.db.begin() as session:
        session.execute(
            insert(Notice).values(
                key=f"k-{status}",
                spec_name="hourly",
                kind="x",
                status=status,
                occurred_at=core.now(),
                created_at=core.now(),
                url="http://receiver.invalid/",
            )
        )


_MINUTE = timedelta(minutes=1)
# A state that gives one stage work, and that stage (None: the notice outbox).
CASES: dict[str, tuple[Callable[[Core], None], tick.Stage | None]] = {
    "an open create_backup run": (lambda c: _fire(c), reconcile_fires),
    "a failed run under watch for a retry": (
        lambda c: _fire(c, outcome="FAILED", finished_at=c.now() - _MINUTE),
        reconcile_fires,
    ),
    "a purge under way": (lambda c: _spec(c, deleting=True), tick._advance_purges),
    "a restore under way": (
        lambda c: _backup(c, restore_status="RUNNING", restore_workflow_id="r-1"),
        follow_runs,
    ),
    "a verification under way": (
        lambda c: _backup(c, verify_run_status="STARTING"),
        follow_runs,
    ),
    "a due verifyCron fire": (
        lambda c: _spec(c, next_verify_at=c.now() - _MINUTE),
        start_scheduled_verifications,
    ),
    "an expired backup": (
        lambda c: _backup(c, status=BackupStatus.EXPIRING.value, expires_at=c.now() - _MINUTE),
        start_pending_removals,
    ),
    "a backup to remove": (
        lambda c: _backup(c, status=BackupStatus.REMOVING.value),
        start_pending_removals,
    ),
    "a removal under way": (
        lambda c: _backup(c, status=BackupStatus.REMOVING.value, remove_workflow_id="rm-1"),
        reconcile_removals,
    ),
    "a removal recorded by a run not seen ending": (
        lambda c: _backup(c, status=BackupStatus.REMOVED.value, removed_by_open_run="rm-2"),
        reconcile_removals,
    ),
    "a notice to start": (lambda c: _notice(c, "PENDING"), None),
    "a notice to follow": (lambda c: _notice(c, "STARTED"), None),
}


@pytest.mark.parametrize("case", CASES)
def test_the_look_ahead_finds_each_stages_work(core: Core, case: str) -> None:
    core.add_spec("hourly", cron="0 0 * * * *")
    with core.services.db() as session:
        idle = tick._look_ahead(session, core.now())
    assert idle == tick.Work(frozenset(), False)
    make, stage = CASES[case]
    make(core)
    with core.services.db() as session:
        found = tick._look_ahead(session, core.now())
    stages = frozenset() if stage is None else frozenset({stage})
    expected = tick.Work(stages, outbox=stage is None)
    assert found == expected
