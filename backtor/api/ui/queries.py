"""What /ui reads, beyond backtor.db.repository: a bounded figure or two per listed spec.

Every query is over the specs of one page (ids bound as parameters) and returns at most a
row per spec and status; the rows themselves come from the repository (list_specs,
list_backups, a page at a time) and the plan from the same code as GET .../retention.
`newest_successes` is backtor.observability.freshness's, shared with the overdue notices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backtor.core.retention import RetentionPlan, plan_retention
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.observability.collector import HELD_STATUSES
from backtor.observability.freshness import newest_successes as newest_successes
from backtor.scheduling.recording import completed_records, policy_of


def status_counts(session: Session, spec_ids: Collection[int]) -> dict[int, Mapping[str, int]]:
    """Per spec, how many backups it has in each status (a few rows per spec)."""
    if not spec_ids:
        return {}
    rows = session.execute(
        select(Backup.spec_id, Backup.status, func.count())
        .where(Backup.spec_id.in_(spec_ids))
        .group_by(Backup.spec_id, Backup.status)
    )
    counts: defaultdict[int, dict[str, int]] = defaultdict(dict)
    for spec_id, status, count in rows:
        counts[spec_id][status] = int(count)
    return dict(counts)


def plan_of(session: Session, spec: BackupSpec) -> RetentionPlan:
    """Today's plan, as GET /backup/{name}/retention makes it: over the COMPLETED candidates."""
    return plan_retention(
        completed_records(session, spec.id), policy_of(spec), ZoneInfo(spec.timezone)
    )


# Backups that hold data: what can be verified (or was, before its removal began).
WITH_DATA = (
    BackupStatus.COMPLETED.value,
    BackupStatus.EXPIRING.value,
    BackupStatus.REMOVING.value,
    BackupStatus.REMOVE_FAILED.value,
)


@dataclass(frozen=True)
class Verification:
    """A spec's verification state, as /metrics reports it (held backups only)."""

    newest: Backup | None  # the newest backup holding data, whatever its verdict
    proven: Backup | None  # the newest one whose latest verification is VERIFIED
    failing: int  # held backups whose latest verification FAILED

    @property
    def last_verified(self) -> datetime | None:
        return self.proven.last_verified_at if self.proven is not None else None


def verification(session: Session, spec_id: int) -> Verification:
    """Three bounded reads for one spec's page: two newest-first probes and a count."""
    newest_first = (
        select(Backup)
        .where(Backup.spec_id == spec_id, Backup.status.in_(WITH_DATA))
        .order_by(Backup.end_time.desc(), Backup.id.desc())
        .limit(1)
    )
    newest = session.scalar(newest_first)
    proven = session.scalar(newest_first.where(Backup.verify_status == "VERIFIED"))
    failing = session.scalar(
        select(func.count()).where(
            Backup.spec_id == spec_id,
            Backup.status.in_(HELD_STATUSES),
            Backup.verify_status == "FAILED",
        )
    )
    return Verification(newest, proven, int(failing or 0))
