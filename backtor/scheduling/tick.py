"""One pass of the scheduler: due fires, starts, outcomes, removals; and when to look again."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from backtor.core.errors import ConductorRefused, ConductorUnavailable
from backtor.db.models import SCHEDULER_STATE_ID, BackupSpec, Fire, FireStatus, SchedulerState
from backtor.runtime.services import Services
from backtor.scheduling import leases
from backtor.scheduling.fires import claim_pending, schedule_due_fires, start_fires
from backtor.scheduling.outcomes import reconcile_fires
from backtor.scheduling.removals import advance_purges, reconcile_removals, start_pending_removals

log = logging.getLogger(__name__)


# One pass at a time, across replicas: Conductor hands the tick task to one worker, but a
# worker that stalls past the task's response timeout may see it handed to another. The
# lease outlives the pass's budget, and each step renews it, so a pass never outlives it.
PASS_LEASE = timedelta(seconds=8)
# A pass stops taking new work after this long; what is left carries to the next pass.
PASS_BUDGET = timedelta(seconds=4)
# Fires claimed and started per step, so that a herd renews the lease as it goes.
START_CHUNK = 64
PROCESS_HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class TickReport:
    started: int
    skipped: int
    waiting: int  # fires that could not start (Conductor unavailable) and wait for a retry
    next_due: datetime | None
    healthy: bool
    ran: bool = True  # False: another replica's pass held the lease


def run_tick(services: Services, holder: str = PROCESS_HOLDER) -> TickReport:
    now = services.clock()
    deadline = now + PASS_BUDGET
    if not _take_pass(services, holder, now):
        with services.db.begin() as session:
            busy_until = session.scalar(
                select(SchedulerState.pass_until).where(SchedulerState.id == SCHEDULER_STATE_ID)
            )
        return TickReport(0, 0, 0, busy_until, True, ran=False)
    try:
        with services.db.begin() as session:
            schedule_due_fires(session, now)
        started = skipped = waiting = 0
        while services.clock() < deadline:
            with services.db.begin() as session:
                jobs = claim_pending(session, now, limit=START_CHUNK)
            outcomes = start_fires(services, jobs)
            started += sum(1 for o in outcomes if o.status is FireStatus.STARTED)
            skipped += sum(1 for o in outcomes if o.status is FireStatus.SKIPPED)
            waiting += sum(1 for o in outcomes if o.status is FireStatus.PENDING)
            if waiting or len(jobs) < START_CHUNK:
                break  # Conductor is unwell, or nothing more is claimable
            if not _take_pass(services, holder, services.clock()):
                break
        healthy = waiting == 0
        for stage in (reconcile_fires, _advance_purges, start_pending_removals, reconcile_removals):
            if services.clock() >= deadline or not _take_pass(services, holder, services.clock()):
                break  # out of budget: the rest waits for the next pass
            # Each stage stands alone: Conductor refusing one call must not stop the others.
            try:
                stage(services)
            except (ConductorUnavailable, ConductorRefused) as exc:
                log.warning("scheduler pass: %s stopped early: %s", stage.__name__, exc)
                healthy = False
        with services.db.begin() as session:
            next_due = _next_due(session, services.clock())
    finally:
        _release_pass(services, holder)
    return TickReport(started, skipped, waiting, next_due, healthy)


def _take_pass(services: Services, holder: str, now: datetime) -> bool:
    """Take or renew the pass lease; also the heartbeat the watchdog's stall rule reads."""
    return leases.take(
        services,
        SchedulerState.pass_holder,
        SchedulerState.pass_until,
        holder,
        now,
        PASS_LEASE,
        last_tick_at=now,
    )


def _release_pass(services: Services, holder: str) -> None:
    leases.release(services, SchedulerState.pass_holder, SchedulerState.pass_until, holder)


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
    held = aliased(Fire)
    unclaimed = session.scalar(
        select(Fire.id)
        .where(
            Fire.status == FireStatus.PENDING.value,
            or_(Fire.claimed_until.is_(None), Fire.claimed_until < now),
            # A fire whose spec has another fire under a live claim waits for that claim.
            ~exists().where(
                held.spec_id == Fire.spec_id,
                held.status == FireStatus.PENDING.value,
                held.claimed_until >= now,
            ),
        )
        .limit(1)
    )
    if unclaimed is not None:
        candidates.append(now)
    return min((moment for moment in candidates if moment is not None), default=None)
