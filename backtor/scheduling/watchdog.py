"""Keeps exactly one scheduler tick workflow running in Conductor per tick shard.

Every worker process runs this every few seconds; a lease row in the database lets only
one of them act at a time, so two replicas never start two ticks. A tick terminated or
failed in Conductor's UI, or held by a worker that died, is replaced within seconds; extra
ticks (say, one restarted by hand beside the replacement) are terminated, the oldest kept.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, bindparam, select, update

from backtor.conductor.names import TICK, tick_correlation_id
from backtor.conductor.payloads import WorkflowRun
from backtor.conductor.registration import DEFINITIONS
from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState, shard_state_id
from backtor.runtime.services import Services
from backtor.runtime.settings import MAX_TICK_SHARDS
from backtor.scheduling import leases
from backtor.scheduling.shards import ensure_state_row

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


def take_lease(services: Services, holder: str, now: datetime) -> int | None:
    """The watchdog lease; the number of shards in force, read in the same statement, or
    None when another replica holds the lease."""
    taken, shards = leases.take_reading(
        services,
        SchedulerState.lease_holder,
        SchedulerState.lease_until,
        holder,
        now,
        LEASE,
        read=SchedulerState.tick_shards,
    )
    return max(1, int(shards or 1)) if taken else None


def ensure_tick(services: Services, holder: str, *, sweep: bool = False) -> str | None:
    """Keep one tick workflow running per shard in force; returns the id of shard 0's.

    K comes from this replica's BACKTOR_TICK_SHARDS, written by the lease's holder, so the
    newest deployed setting wins (replicas should agree). K rises before the new shards'
    ticks start (their first pass must not find itself beyond K), and drops only once the
    ticks of the shards beyond it are terminated: a watchdog that dies between the two
    finds the old K at its next run and does it again. A tick whose pass finds its shard
    beyond K also ends by itself (docs/scheduling.md, "Shards").

    `sweep` looks at every possible shard's tick, not only those below the old and new K:
    a replica that lost the lease in the middle of its run may still have started a tick
    for a shard beyond the K another replica wrote meanwhile (the worker sweeps every
    SWEEP_ROUNDS runs).
    """
    now = services.clock()
    before = take_lease(services, holder, now)
    if before is None:
        return None
    shards = services.settings.tick_shards
    if shards > before:
        _write_shards(services, holder, shards)
    looked_at = range(MAX_TICK_SHARDS if sweep else max(shards, before))
    correlation = {shard: tick_correlation_id(shard) for shard in looked_at}
    found = services.conductor.workflows_by_correlation(
        TICK, list(correlation.values()), include_closed=False
    )
    heartbeats = _last_ticks(services, shards)
    kept: dict[int, str] = {}
    for shard in looked_at:
        running = sorted(
            (w for w in found.get(correlation[shard], []) if w.status.is_open),
            key=lambda w: (w.start_time or EPOCH, w.workflow_id),
        )
        if shard >= shards:
            for retired in running:
                services.conductor.terminate_workflow(
                    retired.workflow_id, f"Backtor runs {shards} tick shard(s) now"
                )
                log.info("terminated tick %s of retired shard %d", retired.workflow_id, shard)
            continue
        kept[shard] = _keep_one(services, shard, running, heartbeats.get(shard), now)
    if shards < before:
        _write_shards(services, holder, shards)
    with services.db.begin() as session:
        session.execute(
            _NAME_TICK, [{"row": shard_state_id(i), "tick": tick} for i, tick in kept.items()]
        )
    return kept[0]


def _write_shards(services: Services, holder: str, shards: int) -> None:
    """K, written under the watchdog lease this replica holds."""
    with services.db.begin() as session:
        session.execute(_WRITE_SHARDS, {"holder": holder, "shards": shards})
    log.info("tick shards in force: %d", shards)


def _keep_one(
    services: Services,
    shard: int,
    running: list[WorkflowRun],
    last_tick: datetime | None,
    now: datetime,
) -> str:
    """One shard's tick: replace a stalled one, terminate extras, start one when none runs."""
    if running and stalled(last_tick, running[0].start_time, now):
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
        return keep
    if shard > 0:
        with services.db.begin() as session:
            ensure_state_row(session, shard_state_id(shard))
    keep = services.conductor.start_workflow(
        TICK,
        version=DEFINITIONS.workflow_version(TICK),
        correlation_id=tick_correlation_id(shard),
        input={} if shard == 0 else {"shard": shard},
    )
    log.info(
        "started the scheduler tick workflow %s (shard %d)",
        keep,
        shard,
        extra={"workflow_id": keep},
    )
    return keep


def _last_ticks(services: Services, shards: int) -> dict[int, datetime | None]:
    """Each shard's heartbeat, by shard (a shard whose row is absent has none)."""
    with services.db.begin() as session:
        if shards == 1:
            return {0: session.scalar(_LAST_TICK)}
        rows = session.execute(_LAST_TICKS, {"rows": [shard_state_id(i) for i in range(shards)]})
        return {row.id - SCHEDULER_STATE_ID: row.last_tick_at for row in rows}


# Built once, on the table: the watchdog runs every few seconds on every replica.
_STATE: Table = SchedulerState.__table__  # type: ignore[assignment]
_LAST_TICK = select(SchedulerState.last_tick_at).where(SchedulerState.id == SCHEDULER_STATE_ID)
_LAST_TICKS = select(SchedulerState.id, SchedulerState.last_tick_at).where(
    SchedulerState.id.in_(bindparam("rows", expanding=True))
)
_WRITE_SHARDS = (
    update(_STATE)
    .where(
        _STATE.c.id == SCHEDULER_STATE_ID,
        _STATE.c.lease_holder == bindparam("holder", type_=_STATE.c.lease_holder.type),
    )
    .values(tick_shards=bindparam("shards", type_=_STATE.c.tick_shards.type))
)
_NAME_TICK = (
    update(_STATE)
    .where(_STATE.c.id == bindparam("row", type_=_STATE.c.id.type))
    .values(tick_workflow_id=bindparam("tick", type_=_STATE.c.tick_workflow_id.type))
)
