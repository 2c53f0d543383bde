"""What /ui reads, beyond backtor.db.repository: a bounded figure or two per listed spec.

Every query is over the specs of one page (ids bound as parameters) and returns at most a
row per spec and status; the rows themselves come from the repository (list_specs,
list_backups, a page at a time) and the plan from the same code as GET .../retention.
`newest_successes` is backtor.observability.freshness's, shared with the overdue notices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backtor.core.retention import RetentionPlan, plan_retention
from backtor.db.models import Backup, BackupSpec
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
