"""Counters that add up across every API and worker process: rows in `metric_counter`.

`increment` only notes the amount on the session; the rows are written just before the
session commits, in the same transaction as the event they count, so a rolled-back event
is never counted and a committed one always is. Writing them last, in one sorted upsert,
keeps the lock on a shared row (say `backtor_retention_tasks`) short, and makes every
transaction take counter locks in the same order, so two of them never deadlock on them.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, bindparam, event, select
from sqlalchemy.orm import Session, SessionTransaction

from backtor.db.inserts import DialectInsert, insert_for
from backtor.db.models import BackupSpec, MetricCounter

# Families (the exported name, without `_total`) and the name of their one extra label.
TRIGGER = "backtor_backup_trigger"
WORKFLOW = "backtor_workflow"
SKIPPED = "backtor_backup_skipped"
WARN = "backtor_backup_warn"
TAG = "backtor_backup_tag"
RETENTION_TASKS = "backtor_retention_tasks"
RETENTION_DELETE = "backtor_retention_backup_delete"
# Notices (backtor.scheduling.notices): delivered, and failed after every retry.
NOTIFY_DELIVERED = "backtor_notify_delivered"
NOTIFY_FAILURES = "backtor_notify_failures"
# Restores and verifications (backtor.scheduling.restores): a verdict by result (VERIFIED,
# FAILED), a restore_backup run's end by Conductor status.
VERIFY = "backtor_verify"
RESTORE = "backtor_restore"

COUNTER_LABELS: dict[str, str | None] = {
    TRIGGER: "status",
    WORKFLOW: "status",
    SKIPPED: "reason",
    WARN: "status",
    TAG: "status",
    RETENTION_TASKS: None,
    RETENTION_DELETE: "status",
    NOTIFY_DELIVERED: None,
    NOTIFY_FAILURES: None,
    VERIFY: "result",
    RESTORE: "status",
}

# The schedule lag histogram, kept as cumulative rows: one per bucket bound, sum, count.
SCHEDULE_LAG = "backtor_schedule_lag_seconds"
LAG_BUCKETS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
LAG_BUCKET = SCHEDULE_LAG + "_bucket"
LAG_SUM = SCHEDULE_LAG + "_sum"
LAG_COUNT = SCHEDULE_LAG + "_count"

_PENDING = "backtor.counters.pending"
Key = tuple[str, str, str]


def increment(
    session: Session, name: str, backup: str = "", label: str = "", by: float = 1
) -> None:
    """Add `by` to the series (name, backup, label) when `session` commits."""
    if by <= 0:
        return
    pending: defaultdict[Key, float] = session.info.setdefault(_PENDING, defaultdict(float))
    pending[(name, backup, label)] += by


def observe_schedule_lag(session: Session, seconds: float) -> None:
    """One observation of the lag histogram (start time minus scheduled fire time)."""
    seconds = max(seconds, 0.0)
    for bound in LAG_BUCKETS:
        if seconds <= bound:
            increment(session, LAG_BUCKET, "", bucket_label(bound))
    increment(session, LAG_BUCKET, "", "+Inf")
    increment(session, LAG_COUNT)
    if seconds > 0:
        increment(session, LAG_SUM, by=seconds)


def bucket_label(bound: float) -> str:
    """The `le` label of a bucket, as Prometheus's client libraries write it."""
    return repr(float(bound))


def pending(session: Session) -> dict[Key, float]:
    """What `session` will add when it commits (for tests and debugging)."""
    return dict(session.info.get(_PENDING, {}))


def _write(session: Session) -> None:
    amounts: dict[Key, float] | None = session.info.pop(_PENDING, None)
    if not amounts:
        return
    names = {backup for _, backup, _ in amounts if backup}
    spec_ids = _spec_ids(session, names)
    rows = [
        {
            "name": name,
            "backup": backup,
            "label": label,
            "spec_id": spec_ids.get(backup),
            "value": by,
        }
        for (name, backup, label), by in sorted(amounts.items())
        # A spec deleted in this very transaction takes its series with it.
        if not backup or backup in spec_ids
    ]
    if rows:
        session.execute(_upsert(session.get_bind().dialect.name), rows)


@functools.cache
def _upsert(dialect: str) -> DialectInsert:
    """Built once per dialect, on the table (Core): it runs before almost every commit."""
    table = cast(Table, MetricCounter.__table__)
    statement = insert_for(dialect, table)
    return statement.on_conflict_do_update(
        index_elements=["name", "backup", "label"],
        set_={"value": table.c.value + statement.excluded.value},
    )


_SPEC = BackupSpec.__table__.c
_SPEC_IDS = select(_SPEC.name, _SPEC.id).where(_SPEC.name.in_(bindparam("names", expanding=True)))


def _spec_ids(session: Session, names: Iterable[str]) -> dict[str, int]:
    wanted = sorted(names)
    if not wanted:
        return {}
    return {name: spec_id for name, spec_id in session.execute(_SPEC_IDS, {"names": wanted})}


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _write(session)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # A rollback (or a commit that failed) drops what was noted; savepoints keep it.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def read_all(session: Session) -> list[tuple[str, str, str, float]]:
    """Every counter row, as (name, backup, label, value)."""
    rows: list[Any] = list(
        session.execute(
            select(
                MetricCounter.name, MetricCounter.backup, MetricCounter.label, MetricCounter.value
            )
        ).all()
    )
    return [(row[0], row[1], row[2], float(row[3])) for row in rows]
