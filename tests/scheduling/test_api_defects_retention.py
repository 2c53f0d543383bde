"""Defect 5: retention runs and pins read a spec's whole history, REMOVED and FAILED included.

Only COMPLETED backups are candidates (docs/retention.md, step 1); the plan ignores every
other row, so reading them only costs memory and time as the REMOVED history grows. The
plan over the candidates alone must decide exactly as the plan over every row did: compared
here on generated histories, against the old reading.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.orm import Session

from backtor.core.policy import RetentionPolicy
from backtor.core.retention import BackupRecord, RetentionPlan, plan_retention
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.scheduling.pins import set_pinned
from backtor.scheduling.recording import (
    CANDIDATE_STATUSES,
    apply_plan,
    plan_for,
    policy_of,
    store_tags,
)
from tests.scheduling.conftest import Core

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STATUSES = [s.value for s in BackupStatus]
CANDIDATES = CANDIDATE_STATUSES
COLUMNS = {
    "retentionMinutely": "retention_minutely",
    "retentionHourly": "retention_hourly",
    "retentionDaily": "retention_daily",
    "retentionWeekly": "retention_weekly",
    "retentionMonthly": "retention_monthly",
    "retentionYearly": "retention_yearly",
}


def old_plan_for(session: Session, spec: BackupSpec) -> RetentionPlan:
    """plan_for as it was: every row of the spec, whatever its status (an EXPIRING one is a
    candidate, as COMPLETED: the removal delay of issue 12)."""
    rows = session.execute(
        select(Backup.id, Backup.scheduled_at, Backup.status, Backup.pinned).where(
            Backup.spec_id == spec.id
        )
    ).all()
    records = [
        BackupRecord(str(r.id), r.scheduled_at, _as_planned(r.status), r.pinned) for r in rows
    ]
    return plan_retention(records, policy_of(spec), ZoneInfo(spec.timezone))


def add_rows(core: Core, spec_id: int, rows: list[dict[str, Any]]) -> None:
    with core.services.db.begin() as session:
        session.execute(delete(Backup))
        if rows:
            session.execute(insert(Backup), [{"spec_id": spec_id, **row} for row in rows])


def test_retention_reads_only_the_completed_candidates(core: Core) -> None:
    spec = core.add_spec("history", retention={"retentionDaily": "2", "retentionWeekly": "0"})
    rows = [
        {"status": "REMOVED", "scheduled_at": T0 + timedelta(hours=i), "data_id": f"d{i}"}
        for i in range(200)
    ]
    rows += [{"status": "FAILED", "scheduled_at": T0 + timedelta(hours=i)} for i in range(20)]
    rows += [
        {"status": "COMPLETED", "scheduled_at": T0 + timedelta(days=10 + i), "data_id": f"c{i}"}
        for i in range(3)
    ]
    add_rows(core, spec.id, rows)

    with core.services.db.begin() as session:
        stored = session.get(BackupSpec, spec.id)
        assert stored is not None
        plan = plan_for(session, stored)
        assert len(plan.decisions) == 3  # was 223: every REMOVED and FAILED row as "ignore"
        assert not plan.ignore_ids
        assert [d.action for d in plan.decisions] == ["keep", "keep", "remove"]


def test_a_pin_reads_only_the_completed_candidates(core: Core) -> None:
    spec = core.add_spec("pinned", retention={"retentionDaily": "1"})
    rows = [{"status": "REMOVED", "scheduled_at": T0 + timedelta(hours=i)} for i in range(50)]
    rows += [{"status": "COMPLETED", "scheduled_at": T0 + timedelta(days=5 + i)} for i in range(2)]
    add_rows(core, spec.id, rows)
    fetched: list[int] = []

    @event.listens_for(core.services.engine, "after_cursor_execute")
    def rows_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "backup.spec_id =" in statement:
            fetched.append(statement.partition("WHERE")[2].count("backup.status"))

    with core.services.db.begin() as session:
        stored = session.get(BackupSpec, spec.id)
        assert stored is not None
        oldest = session.scalar(
            select(Backup.id).where(Backup.status == "COMPLETED").order_by(Backup.scheduled_at)
        )
        assert oldest is not None
        pinned = set_pinned(session, stored, oldest, True)
        assert pinned.pinned and pinned.tags == ""
    event.remove(core.services.engine, "after_cursor_execute", rows_read)
    assert fetched and all(fetched)  # every read of the spec's backups filters on status


statuses = st.sampled_from(["COMPLETED"] * 4 + STATUSES)
histories = st.lists(
    st.tuples(
        st.integers(0, 90 * 24),  # hours after T0: equal times happen
        statuses,
        st.integers(0, 7).map(lambda n: n == 0),  # pinned, sometimes
        st.sampled_from(["", "daily", "daily,weekly", "hourly"]),  # stale tags
    ),
    max_size=60,
)
rules = st.sampled_from(["0", "1", "2", "3@L", "2@5", "7"])
zones = st.sampled_from(["UTC", "Europe/Berlin", "America/Sao_Paulo"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=histories, hourly=rules, daily=rules, weekly=rules, monthly=rules, zone=zones)
def test_the_plan_over_candidates_decides_as_the_plan_over_every_row(
    core: Core,
    history: list[tuple[int, str, bool, str]],
    hourly: str,
    daily: str,
    weekly: str,
    monthly: str,
    zone: str,
) -> None:
    with core.services.db() as session:
        spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == "prop"))
    if spec_id is None:  # one spec for every example: the fixture outlives them
        spec_id = core.add_spec("prop").id
    with core.services.db.begin() as session:
        policy = RetentionPolicy.from_fields(
            {
                "retentionMinutely": "0",
                "retentionHourly": hourly,
                "retentionDaily": daily,
                "retentionWeekly": weekly,
                "retentionMonthly": monthly,
                "retentionYearly": "1",
            }
        ).to_fields()
        session.execute(
            update(BackupSpec)
            .where(BackupSpec.id == spec_id)
            .values(
                timezone=zone,
                **{column: policy[field] for field, column in COLUMNS.items()},
            )
        )
    add_rows(
        core,
        spec_id,
        [
            {
                "status": status,
                "scheduled_at": T0 + timedelta(hours=hours),
                "pinned": pinned,
                "tags": tags,
            }
            for hours, status, pinned, tags in history
        ],
    )

    with core.services.db.begin() as session:
        spec = session.get(BackupSpec, spec_id)
        assert spec is not None
        old = old_plan_for(session, spec)
        new = plan_for(session, spec)
        completed = {d.id for d in old.decisions if d.id in _completed_ids(session, spec_id)}
        expiring = {int(i) for i in _completed_ids(session, spec_id, ("EXPIRING",))}
        assert {d.id for d in new.decisions} == completed
        assert [d for d in old.decisions if d.id in completed] == list(new.decisions)
        assert all(d.action == "ignore" for d in old.decisions if d.id not in completed)

        before = _tags(session, spec_id)
        store_tags(session, spec, new)
        after = _tags(session, spec_id)
    for backup_id, (status, tags) in after.items():
        if status in CANDIDATES:
            expected = ",".join(t.value for t in old.by_id[str(backup_id)].tags)
            assert tags == expected
        else:  # other statuses keep the tags they had when they left COMPLETED
            assert tags == before[backup_id][1]

    with core.services.db.begin() as session:
        spec = session.get(BackupSpec, spec_id)
        assert spec is not None
        chosen = apply_plan(session, spec, T0, max_removals=1000)
    removals = [int(d.id) for d in reversed(old.decisions) if d.action == "remove"]
    assert chosen == [i for i in removals if i not in expiring]  # EXPIRING ones wait already


def _completed_ids(
    session: Session, spec_id: int, statuses: tuple[str, ...] = CANDIDATE_STATUSES
) -> set[str]:
    """The candidates' ids (COMPLETED and EXPIRING), or those of `statuses`."""
    return {
        str(i)
        for i in session.scalars(
            select(Backup.id).where(Backup.spec_id == spec_id, Backup.status.in_(statuses))
        )
    }


def _as_planned(status: str) -> str:
    """An EXPIRING backup is planned as a COMPLETED one (it may be kept again)."""
    return BackupStatus.COMPLETED.value if status == BackupStatus.EXPIRING.value else status


def _tags(session: Session, spec_id: int) -> dict[int, tuple[str, str]]:
    return {
        row.id: (row.status, row.tags)
        for row in session.execute(
            select(Backup.id, Backup.status, Backup.tags).where(Backup.spec_id == spec_id)
        )
    }
