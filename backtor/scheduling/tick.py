"""One pass of the scheduler: due fires, starts, outcomes, removals; and when to look again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from backtor.core.errors import ConductorRefused, ConductorUnavailable
from backtor.db.models import SCHEDULER_STATE_ID, BackupSpec, Fire, FireStatus, SchedulerState
from backtor.runtime.services import Services
from backtor.scheduling.fires import claim_pending, schedule_due_fires, start_fires
from backtor.scheduling.outcomes import reconcile_fires
from backtor.scheduling.removals import advance_purges, reconcile_removals, start_pending_removals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    started: int
    skipped: int
    waiting: int  # fires that could not start (Conductor unavailable) and wait for a retry
    next_due: datetime | None
    healthy: bool


def run_tick(services: Services) -> TickReport:
    now = services.clock()
    with services.db.begin() as session:
        _heartbeat(session, now)
        schedule_due_fires(session, now)
    with services.db.begin() as session:
        jobs = claim_pending(session, now)
    outcomes = start_fires(services, jobs)
    started = sum(1 for o in outcomes if o.status is FireStatus.STARTED)
    skipped = sum(1 for o in outcomes if o.status is FireStatus.SKIPPED)
    waiting = sum(1 for o in outcomes if o.status is FireStatus.PENDING)
    healthy = waiting == 0
    for stage in (reconcile_fires, _advance_purges, start_pending_removals, reconcile_removals):
        # Each stage stands alone: Conductor refusing one call must not stop the others.
        try:
            stage(services)
        except (ConductorUnavailable, ConductorRefused) as exc:
            log.warning("scheduler pass: %s stopped early: %s", stage.__name__, exc)
            healthy = False
    with services.db.begin() as session:
        next_due = _next_due(session, now)
    return TickReport(started, skipped, waiting, next_due, healthy)


def _advance_purges(services: Services) -> None:
    with services.db.begin() as session:
        advance_purges(session, services.clock(), services.settings.max_removals_per_run)


def _next_due(session: Session, now: datetime) -> datetime | None:
    """When the next pass has work: the next fire time, or a PENDING fire's retry.

    A PENDING fire claimed by another replica's attempt is due when that claim lapses, not
    now: looking again at once would only spin.
    """
    candidates = [
        session.scalar(
            select(func.min(BackupSpec.next_fire_at)).where(
                BackupSpec.enabled.is_(True), BackupSpec.deleting.is_(False)
            )
        ),
        session.scalar(
            select(func.min(Fire.claimed_until)).where(
                Fire.status == FireStatus.PENDING.value, Fire.claimed_until >= now
            )
        ),
    ]
    unclaimed = session.scalar(
        select(Fire.id)
        .where(
            Fire.status == FireStatus.PENDING.value,
            or_(Fire.claimed_until.is_(None), Fire.claimed_until < now),
        )
        .limit(1)
    )
    if unclaimed is not None:
        candidates.append(now)
    return min((moment for moment in candidates if moment is not None), default=None)


def _heartbeat(session: Session, now: datetime) -> None:
    session.execute(
        update(SchedulerState)
        .where(SchedulerState.id == SCHEDULER_STATE_ID)
        .values(last_tick_at=now)
    )
