"""Is a spec's last success recent enough? The rule of the BacktorBackupMissing alert.

deploy/prometheus/alerts.yml pages when a spec that should be backing up now had no
successful backup for more than 1.5 times the longest wait its schedule allows (at least
5 minutes), counting from its last success, or from when its schedule began to apply when
that is later (created, updated or fromDate). /ui shows the same judgement and the
scheduler's overdue notices (backtor.scheduling.notices) send it, from the same expected
period (backtor.observability.periods) as /metrics, so the page, the alert and the
notification agree.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from backtor.db.models import Backup, BackupSpec
from backtor.observability.collector import SUCCEEDED_STATUSES
from backtor.observability.periods import PeriodCache

# The alert's margin: `> 1.5 * clamp_min(expected_period, 300)` (tests check the rule says so).
OVERDUE_FACTOR = 1.5
MIN_PERIOD_SECONDS = 300.0
# The BacktorBackupNotVerified alert's window: `> 2 * clamp_min(verify period + backup
# period, 3600)` since the newest verified backup (aggregated /metrics counts the same specs).
NOT_VERIFIED_FACTOR = 2.0
MIN_VERIFY_WINDOW_SECONDS = 3600.0
# A page computes new expected periods for at most this long (cached for later pages).
PERIOD_BUDGET_SECONDS = 1.0

_PERIODS = PeriodCache()


@dataclass(frozen=True)
class Freshness:
    """The judgement for one spec at `now`."""

    last_success: datetime | None
    active: bool  # enabled, not being purged, inside its fromDate/toDate window
    period_seconds: float | None  # the schedule's longest wait; None: not expected to run
    since: datetime | None  # what the age is counted from (the alert's reference)
    limit_seconds: float | None  # older than this is overdue
    overdue: bool


def is_active(spec: BackupSpec, now: datetime) -> bool:
    """Should the spec be backing up now (the specs /metrics gives an expected period)."""
    return (
        spec.enabled
        and not spec.deleting
        and (spec.from_date is None or spec.from_date <= now)
        and (spec.to_date is None or spec.to_date > now)
    )


def active_since(spec: BackupSpec) -> datetime:
    """Since when the current schedule applies: created, last updated or fromDate."""
    moments = [spec.created_at, spec.last_update]
    if spec.from_date is not None:
        moments.append(spec.from_date)
    return max(moments)


def deadline(budget_seconds: float = PERIOD_BUDGET_SECONDS) -> float:
    """The monotonic time until which one caller may compute expected periods."""
    return time.monotonic() + budget_seconds


def expected_period(spec: BackupSpec, now: datetime, until: float) -> float | None:
    """The schedule's longest wait between fires (cached per cron and zone), or None."""
    return _PERIODS.get(spec.cron_string, spec.timezone, now, until)


def overdue_limit_seconds(period: float) -> float:
    """How old a spec's last success (or start) may get: the BacktorBackupMissing margin."""
    return OVERDUE_FACTOR * max(period, MIN_PERIOD_SECONDS)


def not_verified_limit_seconds(period: float, verify_period: float) -> float:
    """How old a spec's newest verified backup may get: the BacktorBackupNotVerified window.

    A period is the longest wait between verifications plus the longest wait between
    backups (the most the newest verified backup ages while all is well).
    """
    return NOT_VERIFIED_FACTOR * max(period + verify_period, MIN_VERIFY_WINDOW_SECONDS)


def judge(
    spec: BackupSpec, last_success: datetime | None, now: datetime, until: float
) -> Freshness:
    """Overdue when an active spec's last success (or its start) is older than the limit."""
    if not is_active(spec, now):
        return Freshness(last_success, False, None, None, None, False)
    period = expected_period(spec, now, until)
    if period is None:
        return Freshness(last_success, True, None, None, None, False)
    start = active_since(spec)
    since = last_success if last_success is not None and last_success > start else start
    limit = overdue_limit_seconds(period)
    overdue = now - since > timedelta(seconds=limit)
    return Freshness(last_success, True, period, since, limit, overdue)


def newest_successes(session: Session, spec_ids: Collection[int]) -> dict[int, datetime]:
    """Per spec, when its newest successful backup still held ended (as /metrics reports).

    One probe per spec into the partial index on successful backups, ordered and limited,
    so the cost follows the number of specs asked about, not their backups.
    """
    if not spec_ids:
        return {}
    newest = (
        select(Backup.end_time)
        .where(
            Backup.spec_id == BackupSpec.id,
            Backup.status.in_(SUCCEEDED_STATUSES),
            Backup.end_time.is_not(None),
        )
        .order_by(Backup.end_time.desc(), Backup.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = session.execute(select(BackupSpec.id, newest).where(BackupSpec.id.in_(spec_ids)))
    return {spec_id: ended for spec_id, ended in rows if ended is not None}
