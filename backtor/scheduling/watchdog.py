"""Keeps exactly one scheduler tick workflow running in Conductor.

Every worker process runs this every few seconds; a lease row in the database lets only
one of them act at a time, so two replicas never start two ticks. A tick terminated or
failed in Conductor's UI, or held by a worker that died, is replaced within seconds; extra
ticks (say, one restarted by hand beside the replacement) are terminated, the oldest kept.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, bindparam, select, update

from backtor.conductor.names import TICK, TICK_CORRELATION_ID
from backtor.conductor.registration import DEFINITIONS
from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState
from backtor.runtime.services import Services
from backtor.scheduling import leases

log = logging.getLogger(__name__)

EPOCH = datetime.fromtimestamp(0, UTC)

# Short, so that a dead lease holder delays the takeover by seconds (each run renews it).
LEASE = timedelta(seconds=6)
# A tick that has not beaten for this long is held by a dead worker: replace it rather than
# wait for Conductor's response timeout and sweeper (which may never come). A live tick
# beats at least every MAX_CALLBACK_SECONDS + HOLD_SECONDS (6 s): each pass beats when it
# takes its lease, and a long one again at each step once half its lease is gone
# (backtor.scheduling.tick writes its lease and the heartbeat together).
STALL = timedelta(seconds=10)


def stalled(last_tick_at: datetime | None, tick_started_at: datetime | None, now: datetime) -> bool:
    """A tick is stalled when neither its start nor any pass since is recent.

    Both instants live outside any one process (the database, Conductor), so whichever
    replica holds the lease can tell, however often replicas come and go.
    """
    recent = max((t for t in (last_tick_at, tick_started_at) if t is not None), default=None)
    return recent is not None and now - recent > STALL


def take_lease(services: Services, holder: str, now: datetime) -> bool:
    return leases.take(
        services, SchedulerState.lease_holder, SchedulerState.lease_until, holder, now, LEASE
    )


def ensure_tick(services: Services, holder: str) -> str | None:
    """Start the tick workflow when none runs; returns the id of the one that runs."""
    now = services.clock()
    if not take_lease(services, holder, now):
        return None
    found = services.conductor.workflows_by_correlation(
        TICK, [TICK_CORRELATION_ID], include_closed=False
    ).get(TICK_CORRELATION_ID, [])
    running = sorted(
        (w for w in found if w.status.is_open),
        key=lambda w: (w.start_time or EPOCH, w.workflow_id),
    )
    if running and stalled(_last_tick(services), running[0].start_time, now):
        stuck = running[0].workflow_id
        services.conductor.terminate_workflow(stuck, "Backtor: the scheduler tick stalled")
        log.warning("scheduler tick %s stalled (no heartbeat for %s); replacing it", stuck, STALL)
        running = running[1:]
    if running:
        keep = running[0].workflow_id
        for extra in running[1:]:
            services.conductor.terminate_workflow(
                extra.workflow_id, f"Backtor runs one scheduler tick ({keep})"
            )
            log.warning(
                "terminated an extra scheduler tick %s (keeping %s)", extra.workflow_id, keep
            )
    else:
        keep = services.conductor.start_workflow(
            TICK,
            version=DEFINITIONS.workflow_version(TICK),
            correlation_id=TICK_CORRELATION_ID,
            input={},
        )
        log.info("started the scheduler tick workflow %s", keep, extra={"workflow_id": keep})
    with services.db.begin() as session:
        session.execute(_NAME_TICK, {"tick": keep})
    return keep


def _last_tick(services: Services) -> datetime | None:
    with services.db.begin() as session:
        return session.scalar(_LAST_TICK)


# Built once, on the table: the watchdog runs every few seconds on every replica.
_STATE: Table = SchedulerState.__table__  # type: ignore[assignment]
_LAST_TICK = select(SchedulerState.last_tick_at).where(SchedulerState.id == SCHEDULER_STATE_ID)
_NAME_TICK = (
    update(_STATE)
    .where(_STATE.c.id == SCHEDULER_STATE_ID)
    .values(tick_workflow_id=bindparam("tick", type_=_STATE.c.tick_workflow_id.type))
)
