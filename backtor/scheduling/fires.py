"""Due specs become fires, and fires become create_backup workflows: exactly once each.

A fire is written (PENDING) in the same transaction that moves the spec's next fire time on;
it is claimed before each start attempt and carries its id into the workflow's input. A
retried attempt first looks for a workflow with that fireId in Conductor, so a crash
between "started" and "recorded" never starts a second workflow.

A fire that finds its spec's previous create_backup still running follows the spec's
overlapPolicy (backtor.core.schedule.OverlapPolicy): skipped (`running`), started anyway,
started after terminating the running one, or buffered: it stays PENDING, marked
`skip_reason = buffered`, until the run ends (docs/scheduling.md, "Overlap policies").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    String,
    Update,
    and_,
    bindparam,
    exists,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from backtor.conductor.names import CREATE_BACKUP
from backtor.conductor.payloads import ConductorBadAnswer, WorkflowRun, to_epoch_ms
from backtor.conductor.port import Conductor
from backtor.conductor.registration import DEFINITIONS
from backtor.core.cron import CronSchedule
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable
from backtor.core.schedule import (
    TERMINATED_BY_OVERLAP,
    Decision,
    OverlapAction,
    OverlapPolicy,
    Timing,
    decide,
    jitter_offset,
    on_overlap,
)
from backtor.db import counters
from backtor.db.inserts import DialectInsert, insert_for
from backtor.db.models import SCHEDULED_ONLY, BackupSpec, Fire, FireStatus, SkipReason
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services
from backtor.scheduling.outcomes import record_stray_data
from backtor.scheduling.shards import WHOLE, Part, owned
from backtor.scheduling.stalls import dead_run

log = logging.getLogger(__name__)

# Short, so that a claim left by a pass that died holds its spec only until the failover
# is done (the watchdog's STALL) anyway.
CLAIM = timedelta(seconds=12)
# A start begins only this long before its claim lapses at the latest: more than the
# client's start timeout (backtor.conductor.http.START_TIMEOUT_SECONDS), so the start has
# landed in Conductor, or never will, before the claim can be retaken and looked for.
START_MARGIN = timedelta(seconds=6)
# The start fence (docs/scheduling.md): a start Conductor receives later than this before
# the claim lapses ends before its backup. Half the margin: 3 s for the request in flight
# and Conductor's clock ahead, 3 s for its clock behind, before another attempt may retake
# the fire and look for runs.
FENCE_MARGIN = timedelta(seconds=3)
START_CONCURRENCY = 8
# Fires claimed per chunk of a pass's starts: small enough that the pass renews its lease
# and checks its budget as it goes, large enough that a chunk's look-up is one call.
START_CHUNK = 64
# A spec whose stored schedule cannot be evaluated is looked at again this much later.
UNSCHEDULABLE_RETRY = timedelta(minutes=5)
# A buffered fire (overlapPolicy bufferOne) that an attempt found still waiting is not
# claimed again for this long: behind a run Backtor does not follow (started by hand in
# Conductor), no ledger row says when that run ends, so it is asked at most this often.
BUFFER_POLL = timedelta(seconds=2)
BUFFERED = SkipReason.BUFFERED.value


# One alias for every use: building an alias costs more than running the query it is in.
_RUN = aliased(Fire, name="run")
_HELD = aliased(Fire, name="held")


def not_held(fire: Any, now: Any) -> ColumnElement[bool]:
    """SQL over `fire`: no fire of its spec is under a live claim (an attempt deciding it).

    Candidates are filtered by it before their LIMIT: else a chunk could fill with fires
    that cannot be claimed while claimable ones wait behind them, and the pass, told by
    _next_due that work is ready, would run again at once, claiming nothing (found by the
    simulation with chunks of one fire: thousands of passes back to back).
    """
    return ~exists().where(
        _HELD.spec_id == fire.spec_id,
        _HELD.status == FireStatus.PENDING.value,
        _HELD.claimed_until >= now,
    )


def not_waiting(fire: Any, since: Any) -> ColumnElement[bool]:
    """SQL over `fire` (Fire or an alias of it): not a buffered fire that must still wait.

    A buffered fire waits while its spec has a create_backup Backtor started and has not
    seen end (the ledger: STARTED, no outcome), and for BUFFER_POLL (`since` = now -
    BUFFER_POLL) after an attempt found it still waiting (behind a run Backtor does not
    follow). So while it waits it is neither claimed nor a reason for the tick to run at
    once: no pass asks Conductor about it in vain. Written without NOT, which SQL's NULLs
    would turn against every unmarked fire.
    """
    run = _RUN
    return or_(
        fire.skip_reason.is_(None),
        fire.skip_reason != BUFFERED,
        and_(
            ~exists().where(
                run.spec_id == fire.spec_id,
                run.status == FireStatus.STARTED.value,
                run.outcome.is_(None),
                run.workflow_id.is_not(None),
            ),
            or_(fire.checked_at.is_(None), fire.checked_at <= since),
        ),
    )


def timing_of(spec: BackupSpec) -> Timing:
    return Timing(
        schedule=CronSchedule(spec.cron_string),
        tz=ZoneInfo(spec.timezone),
        from_date=spec.from_date,
        to_date=spec.to_date,
        misfire_grace=timedelta(seconds=spec.misfire_grace_seconds),
        offset=jitter_offset(spec.name, spec.jitter_seconds),
    )


# -- due specs -> fires ---------------------------------------------------------------------


@dataclass(frozen=True)
class DueReport:
    pending: int
    skipped: int


def schedule_due_fires(
    session: Session, now: datetime, limit: int = 10_000, *, part: Part = WHOLE
) -> DueReport:
    """Write a fire for every spec (of the shard) whose next fire time has come; move each on."""
    statement, shard = part.pick(_DUE_SPECS, _DUE_SPECS_SHARDED)
    specs = session.scalars(statement, {"now": now, "limit": limit, **shard}).all()
    # Specs that share a schedule and a due time share a decision: compute it once a pass.
    decisions: dict[tuple[Timing, datetime], Decision] = {}
    rows = [row for spec in specs for row in _due_fire_rows(session, spec, now, decisions)]
    _insert_fires(session, rows)
    pending = sum(1 for row in rows if row["status"] == FireStatus.PENDING.value)
    return DueReport(pending=pending, skipped=len(rows) - pending)


# schedule_due_fires' read, built once (it runs every pass).
_DUE_SPECS = (
    select(BackupSpec)
    .where(
        BackupSpec.enabled.is_(True),
        BackupSpec.deleting.is_(False),
        BackupSpec.next_fire_at <= bindparam("now", type_=UTCDateTime()),
    )
    .order_by(BackupSpec.next_fire_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_DUE_SPECS_SHARDED = _DUE_SPECS.where(owned(BackupSpec.id))


def settle_due_fire(session: Session, spec: BackupSpec, now: datetime) -> None:
    """Decide a due fire now, as the pass would, before the spec's schedule changes.

    A PUT that changes the schedule calls this first (the caller holds the spec's row lock):
    the latest fire time within the grace becomes PENDING for the next pass, those passed
    over are SKIPPED; no due fire is lost to the change (docs/scheduling.md, "Grace rules").
    """
    due = spec.next_fire_at
    if due is None or due > now or not spec.enabled or spec.deleting:
        return
    _insert_fires(session, _due_fire_rows(session, spec, now, {}))


def _due_fire_rows(
    session: Session,
    spec: BackupSpec,
    now: datetime,
    decisions: dict[tuple[Timing, datetime], Decision],
) -> list[dict[str, Any]]:
    """The fire rows of one due spec, which is moved on to its next fire time."""
    assert spec.next_fire_at is not None
    try:
        key = (timing_of(spec), spec.next_fire_at)
        decision = decisions.get(key)
        if decision is None:
            decision = decisions[key] = decide(key[0], key[1], now)
    except (ValueError, KeyError, LookupError) as exc:
        # A stored cron or zone that no longer parses (a library or tzdata upgrade): this
        # spec is skipped, visibly; every other spec is scheduled as usual.
        return [_unschedulable(session, spec, now, exc)]
    rows = []
    if decision.fire is not None:
        rows.append(_fire_row(spec.id, decision.fire, FireStatus.PENDING, None, now))
    missed = [*decision.missed, *([decision.expired] if decision.expired else [])]
    for moment in missed:
        rows.append(_fire_row(spec.id, moment, FireStatus.SKIPPED, SkipReason.MISFIRE, now))
    if missed or decision.more_missed:
        spec.last_skip_at = now
        spec.last_skip_reason = SkipReason.MISFIRE.value
        passed_over = len(missed) + decision.more_missed
        counters.increment(session, counters.SKIPPED, spec.name, "misfire", passed_over)
        counters.increment(session, counters.WARN, spec.name, "warning", passed_over)
        log.warning(
            "spec %s: %d fire time(s) passed over (misfire)",
            spec.name,
            passed_over,
            extra={"backup": spec.name},
        )
    spec.next_fire_at = decision.next_fire_at
    return rows


def _unschedulable(
    session: Session, spec: BackupSpec, now: datetime, error: Exception
) -> dict[str, Any]:
    """Record the due fire of a spec whose stored schedule cannot be evaluated, and retry later."""
    assert spec.next_fire_at is not None
    due = spec.next_fire_at
    spec.next_fire_at = now + UNSCHEDULABLE_RETRY
    spec.last_skip_at = now
    spec.last_skip_reason = SkipReason.INVALID_SCHEDULE.value
    counters.increment(session, counters.SKIPPED, spec.name, SkipReason.INVALID_SCHEDULE.value)
    counters.increment(session, counters.WARN, spec.name, "error")
    log.error(
        "spec %s: its schedule cannot be evaluated (%s: %s); skipped, looked at again at %s",
        spec.name,
        type(error).__name__,
        error,
        spec.next_fire_at.isoformat(),
        extra={"backup": spec.name},
    )
    return _fire_row(spec.id, due, FireStatus.SKIPPED, SkipReason.INVALID_SCHEDULE, now)


def _fire_row(
    spec_id: int, moment: datetime, status: FireStatus, reason: SkipReason | None, now: datetime
) -> dict[str, Any]:
    return {
        "spec_id": spec_id,
        "scheduled_at": moment,
        "status": status.value,
        "skip_reason": reason.value if reason else None,
        "created_at": now,
        "manual": False,
        "attempts": 0,
    }


def _insert_fires(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert scheduled fires; a (spec, fire time) already written is left as it is.

    The key covers scheduled fires only: a manual fire at the same instant is another fire.
    """
    if not rows:
        return
    session.execute(_insert_fires_statement(session.get_bind().dialect.name), list(rows))


@cache
def _insert_fires_statement(dialect: str) -> DialectInsert:
    """_insert_fires' INSERT, built once per dialect."""
    return insert_for(dialect, Fire).on_conflict_do_nothing(
        index_elements=["spec_id", "scheduled_at"], index_where=text(SCHEDULED_ONLY)
    )


def add_manual_fire(session: Session, spec: BackupSpec, now: datetime) -> int:
    """A fire for "back up now"; started right away by the caller through start_fires."""
    fire = Fire(
        spec_id=spec.id,
        scheduled_at=now,
        manual=True,
        status=FireStatus.PENDING.value,
        created_at=now,
        attempts=0,
    )
    session.add(fire)
    session.flush()
    return fire.id


# -- fires -> workflows ---------------------------------------------------------------------


@dataclass(frozen=True)
class FireJob:
    fire_id: int
    spec_id: int
    spec_name: str
    scheduled_at: datetime
    manual: bool
    attempts: int
    worker_config: str | None
    timeout_seconds: int | None
    misfire_grace_seconds: int = 3600
    claimed_until: datetime | None = None  # None: claimed by the caller's own transaction
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    # Marked buffered by an earlier attempt: it holds its spec's buffer, whatever the policy
    # is now, and no misfire grace applies to it.
    buffered: bool = False


@dataclass(frozen=True)
class FireOutcome:
    fire_id: int
    spec_name: str
    scheduled_at: datetime
    status: FireStatus
    workflow_id: str | None = None
    skip_reason: SkipReason | None = None
    error: str | None = None
    refused: bool = False  # Conductor answered, and said no (not merely unreachable)
    started_at: datetime | None = None
    # The claim (FireJob.attempts) it was reached under: recorded only while that claim is
    # still the fire's latest and the fire still PENDING.
    attempt: int = 0
    # SKIPPED (conductor_unavailable) by the caller's choice: a manual trigger gave it up.
    given_up: bool = False
    # Not this attempt's result: another attempt decided the fire first, or the fire is gone
    # (its spec purged); the other fields say what the ledger holds.
    superseded: bool = False
    # PENDING and buffered (overlapPolicy bufferOne): it waits for workflow_id to end.
    buffered: bool = False
    # overlapPolicy terminateOther: the runs this attempt terminated, and the reason given.
    terminated: tuple[str, ...] = ()
    terminate_reason: str | None = None
    # PENDING because its claim ran short before the start could begin: the pass claimed
    # ahead of what Conductor took, which says nothing about Conductor's health.
    lapsed: bool = False


def claim_pending(
    session: Session,
    now: datetime,
    *,
    fire_ids: Iterable[int] | None = None,
    limit: int = 5000,
    part: Part = WHOLE,
) -> list[FireJob]:
    """Claim PENDING fires for one start attempt; a fire claimed by a live attempt is left.

    Claims are serialised per spec (its row is locked first), and a spec that already has
    a fire under a live claim gets no second one: a manual trigger and a pass, or two
    passes, never start create_backup for one spec side by side. A buffered fire is left
    while it waits (not_waiting), unless another fire of its spec is claimed by a pass: the
    two are decided together, so a fire that finds the run ended (before the ledger shows
    it) never starts ahead of the one that waited for it.
    """
    now_and_since = {"now": now, "since": now - BUFFER_POLL}
    if fire_ids is None:
        statement, shard = part.pick(_CANDIDATES, _CANDIDATES_SHARDED)
        candidates = list(session.execute(statement, {**now_and_since, "limit": limit, **shard}))
    else:
        wanted = {**now_and_since, "limit": limit, "fire_ids": list(fire_ids)}
        candidates = list(session.execute(_CANDIDATES_AMONG, wanted))
    if not candidates:
        return []
    spec_ids = sorted({row.spec_id for row in candidates})
    if fire_ids is None:
        others = {"now": now, "spec_ids": spec_ids, "fire_ids": [row.id for row in candidates]}
        candidates += session.execute(_BUFFERED_BESIDE, others).all()
    session.execute(_LOCK_SPECS, {"spec_ids": spec_ids})
    busy = set(session.scalars(_BUSY_SPECS, {"now": now, "spec_ids": spec_ids}))
    ids = [row.id for row in candidates if row.spec_id not in busy]
    if not ids:
        return []
    claim = {"fire_ids": ids, "now": now, "until": now + CLAIM}
    claimed = sorted(session.scalars(_CLAIM, claim))
    rows = session.execute(_CLAIMED, {"fire_ids": claimed}).all()
    return [
        FireJob(
            *row[:9],
            claimed_until=now + CLAIM,
            overlap_policy=_policy(row.overlap_policy),
            buffered=row.skip_reason == BUFFERED,
        )
        for row in rows
    ]


def _unclaimed(now: Any) -> ColumnElement[bool]:
    return and_(
        Fire.status == FireStatus.PENDING.value,
        or_(Fire.claimed_until.is_(None), Fire.claimed_until < now),
    )


# claim_pending's reads, built once (they run in every pass).
_NOW = bindparam("now", type_=UTCDateTime())
_SPEC_IDS: BindParameter[list[int]] = bindparam("spec_ids", expanding=True)
_CANDIDATES = (
    select(Fire.id, Fire.spec_id)
    .where(
        _unclaimed(_NOW),
        not_held(Fire, _NOW),
        not_waiting(Fire, bindparam("since", type_=UTCDateTime())),
    )
    .order_by(Fire.scheduled_at, Fire.id)
    .limit(bindparam("limit"))
)
_CANDIDATES_SHARDED = _CANDIDATES.where(owned(Fire.spec_id))
_CANDIDATES_AMONG = _CANDIDATES.where(Fire.id.in_(bindparam("fire_ids", expanding=True)))
_BUFFERED_BESIDE = select(Fire.id, Fire.spec_id).where(
    _unclaimed(_NOW),
    Fire.spec_id.in_(_SPEC_IDS),
    Fire.skip_reason == BUFFERED,
    Fire.id.not_in(bindparam("fire_ids", expanding=True)),
)
_LOCK_SPECS = (
    select(BackupSpec.id)
    .where(BackupSpec.id.in_(_SPEC_IDS))
    .order_by(BackupSpec.id)
    .with_for_update()
)
_BUSY_SPECS = select(Fire.spec_id).where(
    Fire.spec_id.in_(_SPEC_IDS),
    Fire.status == FireStatus.PENDING.value,
    Fire.claimed_until >= _NOW,
)


# claim_pending's claim and read of what it claimed, built once. The UPDATE leaves loaded
# objects as they are: a pass loads no Fire, and the trigger's manual fire is not read
# again after its claim.
_FIRE_IDS: BindParameter[list[int]] = bindparam("fire_ids", expanding=True)
_CLAIM = (
    update(Fire)
    .where(Fire.id.in_(_FIRE_IDS), _unclaimed(_NOW))
    .values(attempts=Fire.attempts + 1, claimed_until=bindparam("until", type_=UTCDateTime()))
    .returning(Fire.id)
    .execution_options(synchronize_session=False)
)
_CLAIMED = (
    select(
        Fire.id,
        Fire.spec_id,
        BackupSpec.name,
        Fire.scheduled_at,
        Fire.manual,
        Fire.attempts,
        BackupSpec.worker_config,
        BackupSpec.timeout_seconds,
        BackupSpec.misfire_grace_seconds,
        BackupSpec.overlap_policy,
        Fire.skip_reason,
    )
    .join(BackupSpec, BackupSpec.id == Fire.spec_id)
    .where(Fire.id.in_(_FIRE_IDS))
    .order_by(Fire.scheduled_at, Fire.id)
)


def _policy(stored: str | None) -> OverlapPolicy:
    """The stored overlapPolicy; one this version does not know acts as the default."""
    try:
        return OverlapPolicy(stored or OverlapPolicy.SKIP.value)
    except ValueError:
        log.error("unknown overlapPolicy %r stored; acting as skip", stored)
        return OverlapPolicy.SKIP


def start_fires(services: Services, jobs: Sequence[FireJob]) -> list[FireOutcome]:
    """Start a create_backup for each claimed fire, unless one already runs for its spec.

    Conductor is asked once for the open workflows of all the specs concerned, and once
    more (closed ones included) for the specs whose fires were attempted before. Returns
    each fire's outcome as recorded (FireOutcome.superseded: another attempt's).
    """
    if not jobs:
        return []
    return _record_outcomes(services, _attempt_starts(services, jobs))


def start_due(
    services: Services, keep_going: Callable[[], bool], part: Part = WHOLE
) -> list[FireOutcome]:
    """Claim the due fires a chunk at a time and start them; returns what was recorded.

    A pipeline, so that a herd starts at the rate Conductor takes starts: once the chunk
    under way is down to its last REFILL_AT starts, the next chunk is claimed and looked
    up, its starts queue behind them, and the chunk before is recorded. A chunk holds
    CHUNK_SECONDS of starts at the rate measured so far, so its last start still begins
    well inside its claim (START_MARGIN) on a slow server. Each fire still goes claim,
    look-up, start, record, in that order. Each chunk is claimed at the time it is
    claimed, not the pass's start: a claim taken late in a long pass lasts its full CLAIM.
    `keep_going` (the pass's budget and lease) is asked before each new chunk; after a
    chunk that found Conductor unwell, or a claim that ran short, no new chunk is claimed.
    """
    recorded: list[FireOutcome] = []
    version = DEFINITIONS.workflow_version(CREATE_BACKUP)
    began = services.clock()
    finished = 0  # the starts of the chunks recorded so far
    with ThreadPoolExecutor(max_workers=START_CONCURRENCY) as pool:
        limit = _chunk_size(0, 0.0)
        jobs, plan = _claim_and_plan(services, part, limit)
        running = plan.launch(pool, services, version)
        unwell = False
        while jobs:
            unwell = unwell or plan.unwell
            next_jobs: list[FireJob] = []
            next_plan = _Plan([], [])
            if len(jobs) == limit and not unwell:
                unwell = _wait_for_refill(running)
                if not unwell and keep_going():
                    done = finished + sum(1 for future in running if future.done())
                    limit = _chunk_size(done, (services.clock() - began).total_seconds())
                    next_jobs, next_plan = _claim_and_plan(services, part, limit)
            next_running = next_plan.launch(pool, services, version)
            outcomes = [*plan.decided, *(future.result() for future in running)]
            finished += len(running)
            unwell = unwell or any(left_for_retry(outcome) for outcome in outcomes)
            recorded += _record_outcomes(services, outcomes)
            jobs, plan, running = next_jobs, next_plan, next_running
    return recorded


# The next chunk is claimed once the chunk under way has this many starts left: late
# enough that the new chunk's starts begin soon after its claim, early enough that its
# look-up is done before the pool runs dry.
REFILL_AT = 2 * START_CONCURRENCY
# A chunk holds about this many seconds of starts at the pass's measured rate (between
# START_CONCURRENCY and START_CHUNK fires): with REFILL_AT ahead of it, its last start
# begins about this long after its claim, inside START_MARGIN's 6 s.
CHUNK_SECONDS = 3.0
# The first chunk, before any rate is known: its last start begins within 5 s of its claim
# down to 5 starts a second.
FIRST_CHUNK = 4 * START_CONCURRENCY


def _wait_for_refill(running: Sequence[Future[FireOutcome]]) -> bool:
    """Wait until at most REFILL_AT of the chunk's starts are unfinished; True when a
    finished one was left for a retry (Conductor unwell, or its claim ran short)."""
    pending = [future for future in running if not future.done()]
    while len(pending) > REFILL_AT:
        wait(pending, return_when=FIRST_COMPLETED)
        pending = [future for future in pending if not future.done()]
    return any(
        left_for_retry(future.result())
        for future in running
        if future.done() and future.exception() is None
    )


def _chunk_size(finished: int, elapsed_seconds: float) -> int:
    """Fires to claim next: CHUNK_SECONDS of starts at the pass's rate so far, between
    START_CONCURRENCY and START_CHUNK (FIRST_CHUNK while no rate is known)."""
    if finished == 0 or elapsed_seconds <= 0:
        return min(FIRST_CHUNK, START_CHUNK)
    rate = finished / elapsed_seconds
    return max(min(START_CONCURRENCY, START_CHUNK), min(START_CHUNK, int(rate * CHUNK_SECONDS)))


def _claim_and_plan(services: Services, part: Part, limit: int) -> tuple[list[FireJob], _Plan]:
    with services.db.begin() as session:
        jobs = claim_pending(session, services.clock(), limit=limit, part=part)
    return jobs, (_plan_starts(services, jobs) if jobs else _Plan([], []))


def left_for_retry(outcome: FireOutcome) -> bool:
    """Left PENDING for a retry (Conductor unavailable), not buffered behind a run."""
    return outcome.status is FireStatus.PENDING and not outcome.buffered


@dataclass(frozen=True)
class _Plan:
    """A chunk's decisions: outcomes settled without a start, and the starts to make."""

    decided: list[FireOutcome]
    to_start: list[tuple[FireJob, tuple[str, ...]]]

    @property
    def unwell(self) -> bool:
        return any(left_for_retry(outcome) for outcome in self.decided)

    def launch(
        self, pool: ThreadPoolExecutor, services: Services, version: int
    ) -> list[Future[FireOutcome]]:
        return [
            pool.submit(_start_one, services, job, others, version) for job, others in self.to_start
        ]


def _attempt_starts(services: Services, jobs: Sequence[FireJob]) -> list[FireOutcome]:
    """One start attempt per claimed fire; nothing is recorded yet."""
    plan = _plan_starts(services, jobs)
    version = DEFINITIONS.workflow_version(CREATE_BACKUP)
    with ThreadPoolExecutor(max_workers=START_CONCURRENCY) as pool:
        return [*plan.decided, *(run.result() for run in plan.launch(pool, services, version))]


def _plan_starts(services: Services, jobs: Sequence[FireJob]) -> _Plan:
    """Look up the runs of the chunk's specs and decide each fire: start, buffer or skip."""
    conductor = services.conductor
    names = sorted({job.spec_name for job in jobs})
    try:
        open_by_name = conductor.workflows_by_correlation(
            CREATE_BACKUP, names, include_closed=False
        )
        retried = sorted({job.spec_name for job in jobs if job.attempts > 1})
        seen_by_name = (
            conductor.workflows_by_correlation(CREATE_BACKUP, retried, include_closed=True)
            if retried
            else {}
        )
        for run in _unlisted_open_runs(services, names, open_by_name):
            open_by_name.setdefault(run.correlation_id or "", []).append(run)
        dead = {
            run.workflow_id
            for runs in open_by_name.values()
            for run in runs
            if dead_run(services, run)
        }
    except (ConductorUnavailable, ConductorRefused) as exc:
        return _Plan([_unavailable(job, str(exc)) for job in jobs], [])

    # A fire an earlier attempt did start is adopted first: whatever else holds, it ran.
    outcomes: list[FireOutcome] = []
    fresh: list[FireJob] = []
    busy: set[str] = set()
    for job in jobs:
        candidates = [*open_by_name.get(job.spec_name, []), *seen_by_name.get(job.spec_name, [])]
        earlier = _started_for(job, candidates)
        if earlier is not None:
            outcomes.append(_started(job, earlier))
            busy.add(job.spec_name)
        else:
            fresh.append(job)
    passed_over = _passed_over(fresh, services.clock())
    outcomes.extend(passed_over)
    passed = {outcome.fire_id for outcome in passed_over}
    jobs = [job for job in fresh if job.fire_id not in passed]

    # Then each fire whose spec has a run open follows its overlapPolicy.
    to_start: list[tuple[FireJob, tuple[str, ...]]] = []
    buffers = _Buffers(services, jobs)
    for job in jobs:
        running = tuple(
            w.workflow_id
            for w in open_by_name.get(job.spec_name, [])
            if w.status.is_open and w.workflow_id not in dead
        )
        this_pass = job.spec_name in busy
        if not running and not this_pass:
            action = OverlapAction.START
        elif job.buffered:  # it holds the buffer already, whatever the policy is now
            action = OverlapAction.BUFFER if buffers.free(job, own=True) else OverlapAction.SKIP
        else:
            action = on_overlap(
                job.overlap_policy, buffer_free=buffers.free(job), started_this_pass=this_pass
            )
        if action is OverlapAction.BUFFER:
            buffers.take(job)
            outcomes.append(_buffered(job, running[0] if running else None))
        elif action is OverlapAction.SKIP:
            outcomes.append(
                FireOutcome(
                    job.fire_id,
                    job.spec_name,
                    job.scheduled_at,
                    FireStatus.SKIPPED,
                    skip_reason=SkipReason.RUNNING,
                    workflow_id=running[0] if running else None,
                    attempt=job.attempts,
                )
            )
        else:
            busy.add(job.spec_name)
            others = running if action is OverlapAction.TERMINATE_AND_START else ()
            to_start.append((job, others))
    return _Plan(outcomes, to_start)


class _Buffers:
    """Which specs' buffer (overlapPolicy bufferOne: one waiting fire) is taken.

    Taken by a buffered fire outside this batch (read once, only when asked), or by a fire
    of this batch buffered a moment ago. A buffered fire of the batch that starts now
    leaves it free for the next one.
    """

    def __init__(self, services: Services, jobs: Sequence[FireJob]) -> None:
        self._services = services
        self._jobs = jobs
        self._outside: set[int] | None = None
        self._taken: set[int] = set()

    def free(self, job: FireJob, *, own: bool = False) -> bool:
        if job.spec_id in self._taken:
            return False
        return own or job.spec_id not in self._held_outside()

    def take(self, job: FireJob) -> None:
        self._taken.add(job.spec_id)

    def _held_outside(self) -> set[int]:
        if self._outside is None:
            batch = [job.fire_id for job in self._jobs]
            with self._services.db() as session:
                spec_ids = sorted({job.spec_id for job in self._jobs})
                self._outside = set(
                    session.scalars(_BUFFERED_OUTSIDE, {"spec_ids": spec_ids, "batch": batch})
                )
        return self._outside


_BUFFERED_OUTSIDE = select(Fire.spec_id).where(
    Fire.spec_id.in_(_SPEC_IDS),
    Fire.status == FireStatus.PENDING.value,
    Fire.skip_reason == BUFFERED,
    Fire.id.not_in(bindparam("batch", expanding=True)),
)


def _unlisted_open_runs(
    services: Services, names: Sequence[str], listed: Mapping[str, Sequence[WorkflowRun]]
) -> list[WorkflowRun]:
    """Runs the open lookup leaves out but Backtor started and has not seen end: PAUSED ones.

    Conductor's correlated lookup without closed runs lists RUNNING ones only. A run Backtor
    recorded as started, that is neither listed nor finished, still holds its spec.
    """
    known = {run.workflow_id for runs in listed.values() for run in runs}
    with services.db() as session:
        unfinished = session.execute(_UNFINISHED, {"names": list(names)}).all()
    found = []
    for workflow_id, _name in unfinished:
        if workflow_id is None or workflow_id in known:
            continue
        try:
            run = services.conductor.get_workflow(workflow_id, include_tasks=False)
        except ConductorNotFound:
            continue
        if run.status.is_open:
            found.append(run)
    return found


_UNFINISHED = (
    select(Fire.workflow_id, BackupSpec.name)
    .join(BackupSpec, BackupSpec.id == Fire.spec_id)
    .where(
        BackupSpec.name.in_(bindparam("names", expanding=True)),
        Fire.status == FireStatus.STARTED.value,
        Fire.outcome.is_(None),
        Fire.workflow_id.is_not(None),
    )
)


def _passed_over(jobs: Sequence[FireJob], now: datetime) -> list[FireOutcome]:
    """Scheduled fires that must not start: out of their grace, or superseded.

    A fire left PENDING (Conductor refused or was down) keeps its spec's misfire grace, and
    of several PENDING fires of one spec only the latest may start: a late scheduler never
    catches up in a burst. Manual fires are started whenever they can be, and so are
    buffered ones: they waited behind a run, not for a late scheduler (at most one a spec).
    """
    latest: dict[str, datetime] = {}
    jobs = [job for job in jobs if not job.buffered]
    for job in jobs:
        if not job.manual and now - job.scheduled_at <= timedelta(
            seconds=job.misfire_grace_seconds
        ):
            latest[job.spec_name] = max(
                job.scheduled_at, latest.get(job.spec_name, job.scheduled_at)
            )
    return [
        FireOutcome(
            job.fire_id,
            job.spec_name,
            job.scheduled_at,
            FireStatus.SKIPPED,
            skip_reason=SkipReason.MISFIRE,
            attempt=job.attempts,
        )
        for job in jobs
        if not job.manual and job.scheduled_at != latest.get(job.spec_name)
    ]


def _started_for(job: FireJob, workflows: Iterable[WorkflowRun]) -> str | None:
    """The run an earlier attempt started for this fire.

    Its scheduledTime must match too (when it has one): SQLite reuses the ids of deleted
    rows, so a spec purged and created again may see a fire id its old runs carry.
    """
    expected = _scheduled_time(job.scheduled_at)
    for workflow in workflows:
        if workflow.fenced:  # it took no backup: the fire is still to start
            continue
        if workflow.fire_id == job.fire_id and (
            workflow.input.get("scheduledTime", expected) == expected
        ):
            return workflow.workflow_id
    return None


def _scheduled_time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _start_one(
    services: Services, job: FireJob, others: Sequence[str], version: int
) -> FireOutcome:
    """Start the fire's create_backup; first terminate `others` (overlapPolicy terminateOther)."""
    if _claim_lapsing(services, job):
        return _lapsed(job)
    terminated: tuple[str, ...] = ()
    reason = terminate_reason(job) if others else None
    if others:
        assert reason is not None
        terminated, problem = _terminate_others(services, job, others, reason)
        if problem is not None or _claim_lapsing(services, job):
            # Tried again next pass; what was terminated is recorded.
            outcome = _lapsed(job) if problem is None else _unavailable(job, problem)
            return dataclass_replace(outcome, terminated=terminated, terminate_reason=reason)
    try:
        workflow_id = services.conductor.start_workflow(
            CREATE_BACKUP,
            version=version,
            correlation_id=job.spec_name,
            input={
                "backupName": job.spec_name,
                "workerConfig": job.worker_config,
                "timeoutSeconds": job.timeout_seconds,
                "scheduledTime": _scheduled_time(job.scheduled_at),
                "fireId": job.fire_id,
                "manual": job.manual,
                **_start_by(job),
            },
        )
    except ConductorUnavailable as exc:
        outcome = _unavailable(job, str(exc))
    except ConductorRefused as exc:  # an answer Conductor should not give: keep the fire, say why
        log.error(
            "spec %s: could not start create_backup: %s",
            job.spec_name,
            exc,
            extra={"backup": job.spec_name},
        )
        outcome = _unavailable(job, str(exc), refused=True)
    else:
        log.info(
            "spec %s: create_backup %s started for %s",
            job.spec_name,
            workflow_id,
            job.scheduled_at.isoformat(),
            extra={"backup": job.spec_name, "workflow_id": workflow_id},
        )
        outcome = _started(job, workflow_id, services.clock())
    return dataclass_replace(outcome, terminated=terminated, terminate_reason=reason)


def _start_by(job: FireJob) -> dict[str, int]:
    """The fence's input: no start under this claim may take a backup once it lapses."""
    if job.claimed_until is None:  # claimed by the caller's own transaction (manual)
        return {}
    return {"startBy": to_epoch_ms(job.claimed_until - FENCE_MARGIN)}


def _claim_lapsing(services: Services, job: FireJob) -> bool:
    """Too late to start under this claim: a start still under way when it lapses could
    land after another attempt looked for it, and start the fire twice."""
    return job.claimed_until is not None and services.clock() > job.claimed_until - START_MARGIN


def terminate_reason(job: FireJob) -> str:
    """What a run terminated for this fire shows, in Conductor and in its backup's record."""
    what = "the manual backup requested" if job.manual else "the fire"
    return (
        f"{TERMINATED_BY_OVERLAP} for {what} at "
        f"{_scheduled_time(job.scheduled_at)} (fire {job.fire_id})"
    )


def _terminate_others(
    services: Services, job: FireJob, others: Sequence[str], reason: str
) -> tuple[tuple[str, ...], str | None]:
    """Terminate the spec's running create_backups: the ones terminated, and why it stopped
    short (Conductor unreachable: the fire is tried again, and does not start meanwhile).

    One that ended meanwhile (Conductor refuses to terminate it, or has it no more) is
    passed over: it is running no more, which is all the new start needs. Whatever data a
    terminated run's `backup` task handed over is still recorded when the run's end is
    followed (backtor.scheduling.outcomes); a storage worker keeps no file of a task
    cancelled under it.
    """
    terminated: list[str] = []
    for workflow_id in others:
        try:
            services.conductor.terminate_workflow(workflow_id, reason)
        except ConductorUnavailable as exc:
            return tuple(terminated), f"could not terminate create_backup {workflow_id}: {exc}"
        except (ConductorNotFound, ConductorRefused) as exc:
            log.info(
                "spec %s: create_backup %s was not terminated (%s); it ended already",
                job.spec_name,
                workflow_id,
                exc,
                extra={"backup": job.spec_name, "workflow_id": workflow_id},
            )
            continue
        terminated.append(workflow_id)
        log.warning(
            "spec %s: create_backup %s %s",
            job.spec_name,
            workflow_id,
            reason,
            extra={"backup": job.spec_name, "workflow_id": workflow_id},
        )
    return tuple(terminated), None


def _started(job: FireJob, workflow_id: str, at: datetime | None = None) -> FireOutcome:
    return FireOutcome(
        job.fire_id,
        job.spec_name,
        job.scheduled_at,
        FireStatus.STARTED,
        workflow_id=workflow_id,
        started_at=at,
        attempt=job.attempts,
    )


def _buffered(job: FireJob, running: str | None) -> FireOutcome:
    """The fire waits (PENDING, marked buffered) for the spec's running create_backup."""
    behind = f"create_backup {running}" if running else "a create_backup started this pass"
    return FireOutcome(
        job.fire_id,
        job.spec_name,
        job.scheduled_at,
        FireStatus.PENDING,
        workflow_id=running,
        error=f"buffered (overlapPolicy bufferOne): waits for {behind} to end",
        attempt=job.attempts,
        buffered=True,
    )


def _unavailable(job: FireJob, error: str, *, refused: bool = False) -> FireOutcome:
    """The fire stays PENDING (unclaimed) and is tried again at the next tick."""
    return FireOutcome(
        job.fire_id,
        job.spec_name,
        job.scheduled_at,
        FireStatus.PENDING,
        error=error[:500],
        refused=refused,
        attempt=job.attempts,
    )


def _lapsed(job: FireJob) -> FireOutcome:
    return dataclass_replace(
        _unavailable(job, "the claim lapsed before the start; tried again next pass"),
        lapsed=True,
    )


def give_up_fire(
    session: Session, fire_id: int, now: datetime, *, attempt: int | None = None
) -> bool:
    """Close a manual fire that could not start (its caller was told so); True if closed.

    Fenced, so that a fire another attempt is starting, or started, is never closed under
    it: only a PENDING fire still under the caller's claim (`attempt`), or, without one,
    under no live claim at all. A fire that is gone (its spec purged) is left alone.
    """
    fence = (
        Fire.attempts == attempt
        if attempt is not None
        else or_(Fire.claimed_until.is_(None), Fire.claimed_until < now)
    )
    spec_id = session.execute(
        update(Fire)
        .where(Fire.id == fire_id, Fire.status == FireStatus.PENDING.value, fence)
        .values(
            status=FireStatus.SKIPPED.value,
            skip_reason=SkipReason.CONDUCTOR_UNAVAILABLE.value,
            claimed_until=None,
            finished_at=now,
        )
        .returning(Fire.spec_id)
    ).scalar()
    if spec_id is not None:
        name = session.scalar(select(BackupSpec.name).where(BackupSpec.id == spec_id)) or ""
        counters.increment(session, counters.SKIPPED, name, SkipReason.CONDUCTOR_UNAVAILABLE.value)
    session.commit()
    return spec_id is not None


DUPLICATE_REASON = "a duplicate start of a fire that has its own run: terminated by Backtor"


def _record_outcomes(services: Services, outcomes: Sequence[FireOutcome]) -> list[FireOutcome]:
    """Record each attempt's outcome, fenced by its claim; returns what the ledger holds.

    An attempt can stall past its claim (a process paused between its check and its start,
    or before this write) while another attempt takes the fire over. So an outcome is
    written only while the fire is still PENDING under this attempt's claim (`attempts`);
    a STARTED fire is never overwritten. A run this attempt started all the same is the
    fire's start if the fire has none (adopted, even over a SKIPPED), or a duplicate
    (terminated, whatever data it took recorded). A fire that is gone is passed over.
    """
    if not outcomes:
        return []
    now = services.clock()
    recorded: list[FireOutcome] = []
    duplicates: list[FireOutcome] = []
    with services.db.begin() as session:
        for outcome in outcomes:
            if outcome.status is FireStatus.STARTED and outcome.started_at is None:
                outcome = dataclass_replace(outcome, started_at=now)
            if outcome.terminated:
                _note_terminated(session, outcome)
            spec_id = _write_outcome(session, outcome, now)
            if spec_id is not None:
                _account(session, spec_id, outcome, now)
                recorded.append(outcome)
            elif outcome.status is FireStatus.STARTED:
                recorded.append(_place_run(session, outcome, now, duplicates))
            else:
                recorded.append(_ledger_state(session, outcome))
    for duplicate in duplicates:
        _stop_duplicate(services, duplicate)
    return recorded


def _write_outcome(session: Session, outcome: FireOutcome, now: datetime) -> int | None:
    """The fenced write of one outcome; its fire's spec id, or None when it missed."""
    values: dict[str, Any] = {
        "status": outcome.status.value,
        "claimed_until": None,
        "error": outcome.error,
    }
    if outcome.status is FireStatus.STARTED:
        values |= {
            "workflow_id": outcome.workflow_id,
            "started_at": outcome.started_at,
            "skip_reason": None,  # the buffered mark
            "checked_at": None,  # from here on: when the run was last looked inside
        }
    elif outcome.buffered:
        # checked_at: when it was found waiting; it is not looked at again before
        # BUFFER_POLL, nor while the run Backtor follows runs (not_waiting).
        values |= {"skip_reason": BUFFERED, "checked_at": now}
    elif outcome.status is FireStatus.SKIPPED:
        assert outcome.skip_reason is not None
        values["skip_reason"] = outcome.skip_reason.value
        if outcome.given_up:
            values["finished_at"] = now
    params = {f"new_{key}": value for key, value in values.items()}
    params |= {"fire_id": outcome.fire_id, "attempt": outcome.attempt}
    return session.execute(_outcome_update(tuple(values)), params).scalar()


@cache
def _outcome_update(keys: tuple[str, ...]) -> Update:
    """_write_outcome's fenced UPDATE for one set of columns, built once per set. No Fire
    object is loaded in _record_outcomes' transaction: the session is left alone."""
    columns = Fire.__table__.c
    return (
        update(Fire)
        .where(
            Fire.id == bindparam("fire_id"),
            Fire.status == FireStatus.PENDING.value,
            Fire.attempts == bindparam("attempt"),
        )
        .values({key: bindparam(f"new_{key}", type_=columns[key].type) for key in keys})
        .returning(Fire.spec_id)
        .execution_options(synchronize_session=False)
    )


def _note_terminated(session: Session, outcome: FireOutcome) -> None:
    """The fires whose runs this attempt terminated say why, and are followed to the run's
    end. A run that had ended, was retried from Conductor and is terminated before
    reconcile saw it run again has its fire's outcome recorded already: it is reopened
    here, or what the retried run took would be left unrecorded (found by the simulation)."""
    session.execute(
        update(Fire)
        .where(
            Fire.workflow_id.in_(list(outcome.terminated)),
            Fire.status == FireStatus.STARTED.value,
        )
        .values(error=outcome.terminate_reason, outcome=None, finished_at=None)
    )


def _place_run(
    session: Session, outcome: FireOutcome, now: datetime, duplicates: list[FireOutcome]
) -> FireOutcome:
    """A run this attempt started after another attempt took its fire over.

    Still unstarted (PENDING under another claim, or SKIPPED): the run is the fire's start,
    and the other attempt, if it starts one too, finds this one recorded and stops its own.
    Started with another run, or gone: this run is a duplicate, stopped after the commit.
    """
    spec_id = session.execute(
        update(Fire)
        .where(
            Fire.id == outcome.fire_id,
            Fire.status.in_((FireStatus.PENDING.value, FireStatus.SKIPPED.value)),
        )
        .values(
            status=FireStatus.STARTED.value,
            workflow_id=outcome.workflow_id,
            started_at=outcome.started_at,
            skip_reason=None,
            claimed_until=None,
            finished_at=None,
            error=None,
            checked_at=None,
        )
        .returning(Fire.spec_id)
    ).scalar()
    if spec_id is not None:
        log.warning(
            "spec %s: fire %s was taken over by another attempt before it started; "
            "create_backup %s, started by this one, is its run",
            outcome.spec_name,
            outcome.fire_id,
            outcome.workflow_id,
            extra={"backup": outcome.spec_name, "workflow_id": outcome.workflow_id},
        )
        _account(session, spec_id, outcome, now)
        return outcome
    held = _ledger_state(session, outcome)
    if held.status is FireStatus.STARTED and held.workflow_id == outcome.workflow_id:
        return outcome  # the other attempt found this run and recorded it
    duplicates.append(outcome)
    return held


def _ledger_state(session: Session, outcome: FireOutcome) -> FireOutcome:
    """What the ledger holds for a fire another attempt decided (or that is gone)."""
    row = session.execute(_LEDGER, {"fire_id": outcome.fire_id}).first()
    if row is None:
        return dataclass_replace(
            outcome,
            status=FireStatus.PENDING,
            workflow_id=None,
            error="the fire is gone: its spec was deleted",
            superseded=True,
        )
    buffered = row.skip_reason == BUFFERED
    return FireOutcome(
        outcome.fire_id,
        outcome.spec_name,
        outcome.scheduled_at,
        FireStatus(row.status),
        workflow_id=row.workflow_id,
        skip_reason=SkipReason(row.skip_reason) if row.skip_reason and not buffered else None,
        attempt=row.attempts,
        superseded=True,
        buffered=buffered and row.status == FireStatus.PENDING.value,
    )


_LEDGER = select(Fire.status, Fire.workflow_id, Fire.skip_reason, Fire.attempts).where(
    Fire.id == bindparam("fire_id")
)


def _account(session: Session, spec_id: int, outcome: FireOutcome, now: datetime) -> None:
    """The spec's running/skip fields and the counters, for an outcome just recorded."""
    name = outcome.spec_name
    if outcome.status is FireStatus.STARTED:
        assert outcome.started_at is not None
        session.execute(_SPEC_RUNNING, {"spec_id": spec_id, "run": outcome.workflow_id})
        counters.increment(session, counters.TRIGGER, name, "success")
        lag = outcome.started_at - outcome.scheduled_at
        counters.observe_schedule_lag(session, lag.total_seconds())
    elif outcome.status is FireStatus.SKIPPED and not outcome.given_up:
        assert outcome.skip_reason is not None
        reason = outcome.skip_reason.value
        session.execute(_SPEC_SKIPPED, {"spec_id": spec_id, "at": now, "reason": reason})
        log.info(
            "spec %s: fire %s skipped (%s)",
            name,
            outcome.scheduled_at.isoformat(),
            reason,
            extra={"backup": name, "workflow_id": outcome.workflow_id},
        )
        counters.increment(session, counters.TRIGGER, name, "error")
        counters.increment(session, counters.SKIPPED, name, reason)
        counters.increment(session, counters.WARN, name, "warning")
    elif outcome.buffered:  # not an error: it starts once the running one ends
        log.info(
            "spec %s: fire %s buffered behind create_backup %s (overlapPolicy bufferOne)",
            name,
            outcome.scheduled_at.isoformat(),
            outcome.workflow_id,
            extra={"backup": name, "workflow_id": outcome.workflow_id},
        )
    elif outcome.lapsed:  # not an error: the pass claimed ahead of what Conductor took
        log.info(
            "spec %s: fire %s not started before its claim ran short; next pass",
            name,
            outcome.scheduled_at.isoformat(),
            extra={"backup": name},
        )
    else:  # still PENDING (Conductor unreachable or refusing: tried again later), or given up
        counters.increment(session, counters.TRIGGER, name, "error")
        counters.increment(session, counters.WARN, name, "error")
        if outcome.given_up:
            reason = SkipReason.CONDUCTOR_UNAVAILABLE.value
            counters.increment(session, counters.SKIPPED, name, reason)


# _account's writes to the spec, built once; no spec object is loaded in that transaction.
_SPEC_RUNNING = (
    update(BackupSpec)
    .where(BackupSpec.id == bindparam("spec_id"))
    .values(running_create_workflow_id=bindparam("run", type_=String()))
    .execution_options(synchronize_session=False)
)
_SPEC_SKIPPED = (
    update(BackupSpec)
    .where(BackupSpec.id == bindparam("spec_id"))
    .values(
        last_skip_at=bindparam("at", type_=UTCDateTime()),
        last_skip_reason=bindparam("reason", type_=String()),
    )
    .execution_options(synchronize_session=False)
)


def _stop_duplicate(services: Services, outcome: FireOutcome) -> None:
    """Terminate a create_backup its fire does not own; record any data it took first.

    Its fire started another run (the two attempts raced), or the fire is gone. A storage
    worker keeps no file of a run terminated under it; a backup it finished before is
    recorded here, as nothing else follows this run.
    """
    workflow_id = outcome.workflow_id
    assert workflow_id is not None
    extra = {"backup": outcome.spec_name, "workflow_id": workflow_id}
    try:
        try:
            services.conductor.terminate_workflow(workflow_id, DUPLICATE_REASON)
        except ConductorNotFound:
            return
        except ConductorRefused:
            pass  # it ended already (a COMPLETED run cannot be terminated): its data is read
        workflow = services.conductor.get_workflow(workflow_id, include_tasks=True)
    except (ConductorUnavailable, ConductorRefused) as exc:
        log.error(
            "spec %s: create_backup %s duplicates the run of fire %s and could not be "
            "stopped (%s); the data it takes is still recorded by its own apply_retention",
            outcome.spec_name,
            workflow_id,
            outcome.fire_id,
            exc,
            extra=extra,
        )
        return
    log.warning(
        "spec %s: create_backup %s duplicated the run of fire %s: terminated",
        outcome.spec_name,
        workflow_id,
        outcome.fire_id,
        extra=extra,
    )
    record_stray_data(services, outcome.spec_name, outcome.scheduled_at, workflow)


# -- a manual trigger's start ---------------------------------------------------------------


@dataclass(frozen=True)
class ManualStart:
    """A manual fire's start. `outcome` is the attempt's, or the ledger's when another
    attempt decided the fire first. `unconfirmed`: the fire stays PENDING for the scheduler
    (the start's answer was lost and Conductor could not be asked whether it happened, or
    another attempt holds the fire)."""

    outcome: FireOutcome
    unconfirmed: bool = False


def start_manual_fire(
    services: Services, job: FireJob, overlap: OverlapPolicy | None = None
) -> ManualStart:
    """start_fires for one claimed manual fire, never losing track of a start that happened.

    A start whose answer is lost (timeout, garbled 2xx) may have created the workflow. The
    trigger cannot wait for the scheduler's retry (it must answer now), so it asks Conductor
    at once for the spec's create_backup runs carrying this fire's id: found, the fire is
    STARTED with it; not found, nothing started; the question failing too, `unconfirmed`.
    A fire known not to have started is closed (SKIPPED, conductor_unavailable) in the same
    fenced write, so no pass takes it between the write and the caller's answer.

    `overlap` overrides the spec's overlapPolicy for this attempt (the trigger's
    `?overlap=`); a fire it leaves buffered stays PENDING for the scheduler, which starts
    it once the running one ends (under the spec's own policy, should it be tried again).
    """
    if overlap is not None:
        job = dataclass_replace(job, overlap_policy=overlap)
    checked = _LostStartLookup(services.conductor, job.fire_id)
    looked_up = dataclass_replace(services, conductor=cast(Conductor, checked))
    (attempted,) = _attempt_starts(looked_up, [job])
    unconfirmed = checked.unconfirmed and attempted.status is FireStatus.PENDING
    closing = attempted.status is FireStatus.PENDING and not unconfirmed and not attempted.buffered
    given_up = dataclass_replace(
        attempted,
        status=FireStatus.SKIPPED,
        skip_reason=SkipReason.CONDUCTOR_UNAVAILABLE,
        given_up=True,
    )
    (recorded,) = _record_outcomes(services, [given_up if closing else attempted])
    if recorded.superseded:
        waiting = recorded.status is FireStatus.PENDING and not recorded.buffered
        return ManualStart(recorded, unconfirmed=waiting)
    return ManualStart(attempted, unconfirmed)


class _LostStartLookup:
    """A Conductor whose start_workflow, when the answer is lost, looks for the run it made."""

    def __init__(self, conductor: Conductor, fire_id: int) -> None:
        self._conductor = conductor
        self._fire_id = fire_id
        self.unconfirmed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conductor, name)

    def start_workflow(
        self,
        name: str,
        *,
        input: Mapping[str, Any],
        correlation_id: str,
        version: int | None = None,
    ) -> str:
        try:
            return self._conductor.start_workflow(
                name, input=input, correlation_id=correlation_id, version=version
            )
        except (ConductorUnavailable, ConductorBadAnswer) as lost:
            found = self._lookup(name, correlation_id)
            if found is None:
                raise
            log.warning(
                "spec %s: the answer to starting %s was lost (%s); Conductor shows %s for fire %s",
                correlation_id,
                name,
                lost,
                found,
                self._fire_id,
                extra={"backup": correlation_id, "workflow_id": found},
            )
            return found

    def _lookup(self, name: str, correlation_id: str) -> str | None:
        try:
            runs = self._conductor.workflows_by_correlation(
                name, [correlation_id], include_closed=True
            )
        except (ConductorUnavailable, ConductorRefused) as exc:
            self.unconfirmed = True
            log.warning(
                "spec %s: cannot tell whether fire %s started %s: %s",
                correlation_id,
                self._fire_id,
                name,
                exc,
                extra={"backup": correlation_id},
            )
            return None
        for run in runs.get(correlation_id, []):
            if run.fire_id == self._fire_id and not run.fenced:
                return run.workflow_id
        return None
