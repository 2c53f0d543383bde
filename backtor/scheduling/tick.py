"""One pass of the scheduler: due fires, starts, outcomes, removals; and when to look again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backtor.core.errors import ConductorUnavailable
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
    try:
        reconcile_fires(services)
        with services.db.begin() as session:
            advance_purges(session, services.clock(), services.settings.max_removals_per_run)
        start_pending_removals(services)
        reconcile_removals(services)
    except ConductorUnavailable as exc:
        log.warning("Conductor unavailable during reconciliation: %s", exc)
        healthy = False
    with services.db.begin() as session:
        next_due = session.scalar(
            select(func.min(BackupSpec.next_fire_at)).where(
                BackupSpec.enabled.is_(True), BackupSpec.deleting.is_(False)
            )
        )
        if session.scalar(select(Fire.id).where(Fire.status == FireStatus.PENDING.value).limit(1)):
            next_due = now if next_due is None else min(next_due, now)
    return TickReport(started, skipped, waiting, next_due, healthy)


def _heartbeat(session: Session, now: datetime) -> None:
    session.execute(
        update(SchedulerState)
        .where(SchedulerState.id == SCHEDULER_STATE_ID)
        .values(last_tick_at=now)
    )
