"""One pass of the scheduler: due fires, starts, outcomes, removals; and when to look again."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Update, bindparam, exists, func, or_, select, true
from sqlalchemy.orm import Session

from backtor.core.errors import ConductorRefused, ConductorUnavailable
from backtor.db.models import BackupSpec, Fire, FireStatus, SchedulerState
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services
from backtor.scheduling import leases, notices, outcomes, removals, restores, verifications
from backtor.scheduling.fires import (
    BUFFER_POLL,
    left_for_retry,
    not_held,
    not_waiting,
    schedule_due_fires,
    start_due,
)
from backtor.scheduling.notices import notice_step
from backtor.scheduling.outcomes import RETRY_WATCH, reconcile_fires
from backtor.scheduling.removals import advance_purges, reconcile_removals, start_pending_removals
from backtor.scheduling.restores import follow_runs
from backtor.scheduling.shards import Part, ensure_state_row, owned, part_of
from backtor.scheduling.verifications import start_scheduled_verifications

log = logging.getLogger(__name__)


# One pass at a time, across replicas: Conductor hands the tick task to one worker, but a
# worker that stalls past the task's response timeout may see it handed to another. The
# lease is twice the pass's budget, and each step first makes sure it holds it (renewing it
# once half of it is gone), so each step begins with at least PASS_BUDGET of it left.
PASS_LEASE = timedelta(seconds=8)
# A pass stops taking new work after this long; what is left carries to the next pass.
PASS_BUDGET = timedelta(seconds=4)
PROCESS_HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class TickReport:
    started: int
    skipped: int
    waiting: int  # fires that could not start (Conductor unavailable, a claim ran short)
    next_due: datetime | None
    healthy: bool
    ran: bool = True  # False: another replica's pass held the lease
    retired: bool = False  # True: the shard is beyond the number in force; its tick ends


def run_tick(
    services: Services,
    holder: str = PROCESS_HOLDER,
    shard: int = 0,
    budget: timedelta = PASS_BUDGET,
) -> TickReport:
    """One pass of tick shard `shard` (docs/scheduling.md, "Shards"; 0: all specs when K=1).

    `budget`: how long the pass takes new work (at most PASS_BUDGET); its task's holder
    gives less when it has held the task a while already.
    """
    now = services.clock()
    deadline = now + min(budget, PASS_BUDGET)
    lease = _pass_lease(services, holder, Part(shard).row)
    if not lease.keep(now) and not (shard > 0 and _first_pass_of_shard(services, lease, now)):
        with services.db.begin() as session:
            busy_until = session.scalar(_PASS_UNTIL, {"row": lease.row})
        return TickReport(0, 0, 0, busy_until, True, ran=False)
    released = False
    try:
        with services.db.begin() as session:
            # K is read once, at the start: the whole pass works on one partition.
            part = part_of(session, shard)
            if not part.retired:
                schedule_due_fires(session, now, part=part)
                work = _look_ahead(session, now)
        if part.retired:
            log.info("scheduler tick shard %d ends: %d shard(s) in force", shard, part.count)
            return TickReport(0, 0, 0, None, True, retired=True)
        started_or_skipped = start_due(
            services,
            keep_going=lambda: services.clock() < deadline and lease.keep(services.clock()),
            part=part,
        )
        started = sum(1 for o in started_or_skipped if o.status is FireStatus.STARTED)
        skipped = sum(1 for o in started_or_skipped if o.status is FireStatus.SKIPPED)
        waiting = sum(1 for o in started_or_skipped if left_for_retry(o))
        # A claim that ran short (the pass claimed ahead of Conductor) is no fault of it.
        healthy = not any(left_for_retry(o) and not o.lapsed for o in started_or_skipped)
        # Runs just started (or terminated for them) are followed at once.
        found = work.stages | {reconcile_fires} if started_or_skipped else work.stages
        ran_a_stage = False
        for stage in _STAGES:
            if not (ran_a_stage or stage in found):
                continue  # nothing to read, and no stage before it wrote anything
            ran_a_stage = True
            if services.clock() >= deadline or not lease.keep(services.clock()):
                break  # out of budget: the rest waits for the next pass
            # Each stage stands alone: Conductor refusing one call must not stop the others.
            try:
                stage(services, part)
            except (ConductorUnavailable, ConductorRefused) as exc:
                log.warning("scheduler pass: %s stopped early: %s", stage.__name__, exc)
                healthy = False
        # Notifications last, bounded; their failures are logged there, never the pass's.
        if part.notices and services.clock() < deadline and lease.keep(services.clock()):
            # A stage that ran may have written a notice: the outbox is read then too.
            notice_step(services, deadline, outbox=work.outbox or ran_a_stage)
        # The last look and the release in one transaction: one write fewer a pass.
        with services.db.begin() as session:
            next_due = _next_due(session, services.clock(), part)
            session.execute(*_release_statement(holder, lease.row))
        released = True
    finally:
        if not released:
            _release_pass(services, holder, lease.row)
    return TickReport(started, skipped, waiting, next_due, healthy)


def _pass_lease(services: Services, holder: str, row: int) -> leases.Kept:
    """The pass lease; its writes are also the heartbeat the watchdog's stall rule reads."""
    return leases.Kept(
        services,
        SchedulerState.pass_holder,
        SchedulerState.pass_until,
        holder,
        PASS_LEASE,
        stamp=SchedulerState.last_tick_at,
        row=row,
    )


def _first_pass_of_shard(services: Services, lease: leases.Kept, now: datetime) -> bool:
    """A shard's row is created on demand (the watchdog creates it too): then take again."""
    with services.db.begin() as session:
        if session.scalar(_PASS_UNTIL_ROW_EXISTS, {"row": lease.row}) is not None:
            return False
        ensure_state_row(session, lease.row)
    return lease.keep(now)


_PASS_UNTIL = select(SchedulerState.pass_until).where(SchedulerState.id == bindparam("row"))
_PASS_UNTIL_ROW_EXISTS = select(SchedulerState.id).where(SchedulerState.id == bindparam("row"))


def _release_statement(holder: str, row: int) -> tuple[Update, dict[str, Any]]:
    return leases.release_statement(
        SchedulerState.pass_holder, SchedulerState.pass_until, holder, row
    )


def _release_pass(services: Services, holder: str, row: int) -> None:
    leases.release(services, SchedulerState.pass_holder, SchedulerState.pass_until, holder, row)


def _advance_purges(services: Services, part: Part) -> None:
    with services.db.begin() as session:
        advance_purges(session, services.clock(), services.settings.max_removals_per_run, part=part)


Stage = Callable[[Services, Part], object]


# The stages after the starts, in order; each runs only when the look-ahead found it work.
_STAGES: tuple[Stage, ...] = (
    reconcile_fires,
    _advance_purges,
    follow_runs,  # before removals: a verification that ended lets its removal start
    start_scheduled_verifications,  # after follow_runs: a verdict just in counts
    start_pending_removals,
    reconcile_removals,
)


@dataclass(frozen=True)
class Work:
    stages: frozenset[Stage]  # the stages that have something to read
    outbox: bool  # a notice waits to be started or followed


def _look_ahead(session: Session, now: datetime) -> Work:
    """The stages with anything to read, and the outbox: one statement, not a dozen.

    An idle pass then costs four transactions (issue 14, the lean worker); the simulation
    pays for every stage's empty reads too. Each stage's condition is the same as its
    reads' and spans every shard, so a stage is never skipped with work waiting. Once a
    stage runs, every later one does: its writes may give them work (a verification that
    ended frees a removal, a recorded backup expires others), as in a pass without the
    look-ahead. Work that an API call or a worker writes meanwhile waits for the next pass.
    """
    *found, outbox = session.execute(_LOOK_AHEAD, {"now": now, "since": now - RETRY_WATCH}).one()
    return Work(frozenset(stage for stage, has in zip(_STAGES, found, strict=True) if has), outbox)


def _next_due(session: Session, now: datetime, part: Part) -> datetime | None:
    """When the next pass has work: the next fire time, or a PENDING fire's retry.

    A PENDING fire claimed by another replica's attempt is due when that claim lapses, not
    now: looking again at once would only spin. So is a buffered fire while it waits
    (fires.not_waiting): the tick's own beat is its poll, and the pass that records the end
    of the run it waits for finds it due at once. One statement, built once: it runs after
    every pass.
    """
    statement, shard = part.pick(_NEXT_DUE, _NEXT_DUE_SHARDED)
    next_fire_at, claim_lapses, unclaimed = session.execute(
        statement, {"now": now, "buffer_since": now - BUFFER_POLL, **shard}
    ).one()
    candidates = [next_fire_at, claim_lapses, now if unclaimed else None]
    return min((moment for moment in candidates if moment is not None), default=None)


def _next_due_statement(sharded: bool) -> Select[datetime | None, datetime | None, bool]:
    now = bindparam("now", type_=UTCDateTime())
    buffer_since = bindparam("buffer_since", type_=UTCDateTime())
    pending = Fire.status == FireStatus.PENDING.value
    spec_owned = owned(BackupSpec.id) if sharded else true()
    fire_owned = owned(Fire.spec_id) if sharded else true()
    next_fire_at = (
        select(func.min(BackupSpec.next_fire_at))
        .where(BackupSpec.enabled.is_(True), BackupSpec.deleting.is_(False), spec_owned)
        .scalar_subquery()
    )
    claim_lapses = (
        select(func.min(Fire.claimed_until))
        .where(pending, Fire.claimed_until >= now, fire_owned)
        .scalar_subquery()
    )
    unclaimed = exists().where(
        pending,
        fire_owned,
        or_(Fire.claimed_until.is_(None), Fire.claimed_until < now),
        # A fire whose spec has another fire under a live claim waits for that claim.
        not_held(Fire, now),
        not_waiting(Fire, buffer_since),
    )
    return select(next_fire_at, claim_lapses, unclaimed)


_LOOK_AHEAD = select(
    outcomes.WORK,
    removals.PURGE_WORK,
    restores.WORK,
    verifications.WORK,
    removals.START_WORK,
    removals.FOLLOW_WORK,
    notices.WORK,
)
_NEXT_DUE = _next_due_statement(sharded=False)
_NEXT_DUE_SHARDED = _next_due_statement(sharded=True)
