"""Due specs become fires, and fires become create_backup workflows: exactly once each.

A fire is written (PENDING) in the same transaction that moves the spec's next fire time on;
it is claimed before each start attempt and carries its id into the workflow's input. A
retried attempt first looks for a workflow with that fireId in Conductor, so a crash
between "started" and "recorded" never starts a second workflow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backtor.conductor.names import CREATE_BACKUP
from backtor.conductor.payloads import ConductorBadAnswer, WorkflowRun
from backtor.conductor.port import Conductor
from backtor.conductor.registration import DEFINITIONS
from backtor.core.cron import CronSchedule
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable
from backtor.core.schedule import Decision, Timing, decide
from backtor.db import counters
from backtor.db.models import BackupSpec, Fire, FireStatus, SkipReason
from backtor.runtime.services import Services
from backtor.scheduling.stalls import dead_run

log = logging.getLogger(__name__)

# Short, so that a claim left by a pass that died holds its spec only until the failover
# is done (the watchdog's STALL) anyway.
CLAIM = timedelta(seconds=12)
# A start begins only this long before its claim lapses at the latest: more than the
# client's start timeout (backtor.conductor.http.START_TIMEOUT_SECONDS), so the start has
# landed in Conductor, or never will, before the claim can be retaken and looked for.
START_MARGIN = timedelta(seconds=6)
START_CONCURRENCY = 8
# A spec whose stored schedule cannot be evaluated is looked at again this much later.
UNSCHEDULABLE_RETRY = timedelta(minutes=5)


def timing_of(spec: BackupSpec) -> Timing:
    return Timing(
        schedule=CronSchedule(spec.cron_string),
        tz=ZoneInfo(spec.timezone),
        from_date=spec.from_date,
        to_date=spec.to_date,
        misfire_grace=timedelta(seconds=spec.misfire_grace_seconds),
    )


# -- due specs -> fires ---------------------------------------------------------------------


@dataclass(frozen=True)
class DueReport:
    pending: int
    skipped: int


def schedule_due_fires(session: Session, now: datetime, limit: int = 10_000) -> DueReport:
    """Write a fire for every spec whose next fire time has come; move each spec on."""
    specs = session.scalars(
        select(BackupSpec)
        .where(
            BackupSpec.enabled.is_(True),
            BackupSpec.deleting.is_(False),
            BackupSpec.next_fire_at <= now,
        )
        .order_by(BackupSpec.next_fire_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    # Specs that share a schedule and a due time share a decision: compute it once a pass.
    decisions: dict[tuple[Timing, datetime], Decision] = {}
    rows = [row for spec in specs for row in _due_fire_rows(session, spec, now, decisions)]
    _insert_fires(session, rows)
    pending = sum(1 for row in rows if row["status"] == FireStatus.PENDING.value)
    return DueReport(pending=pending, skipped=len(rows) - pending)


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
    """Insert fires; a (spec, time) already written is left as it is."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Fire).on_conflict_do_nothing(index_elements=["spec_id", "scheduled_at"])
    session.execute(statement, list(rows))


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


def claim_pending(
    session: Session, now: datetime, *, fire_ids: Iterable[int] | None = None, limit: int = 5000
) -> list[FireJob]:
    """Claim PENDING fires for one start attempt; a fire claimed by a live attempt is left.

    Claims are serialised per spec (its row is locked first), and a spec that already has
    a fire under a live claim gets no second one: a manual trigger and a pass, or two
    passes, never start create_backup for one spec side by side.
    """
    claimable = and_(
        Fire.status == FireStatus.PENDING.value,
        or_(Fire.claimed_until.is_(None), Fire.claimed_until < now),
    )
    query = (
        select(Fire.id, Fire.spec_id)
        .where(claimable)
        .order_by(Fire.scheduled_at, Fire.id)
        .limit(limit)
    )
    if fire_ids is not None:
        query = query.where(Fire.id.in_(list(fire_ids)))
    candidates = session.execute(query).all()
    if not candidates:
        return []
    spec_ids = sorted({row.spec_id for row in candidates})
    session.execute(
        select(BackupSpec.id)
        .where(BackupSpec.id.in_(spec_ids))
        .order_by(BackupSpec.id)
        .with_for_update()
    )
    busy = set(
        session.scalars(
            select(Fire.spec_id).where(
                Fire.spec_id.in_(spec_ids),
                Fire.status == FireStatus.PENDING.value,
                Fire.claimed_until >= now,
            )
        )
    )
    ids = [row.id for row in candidates if row.spec_id not in busy]
    if not ids:
        return []
    claimed = set(
        session.scalars(
            update(Fire)
            .where(Fire.id.in_(ids), claimable)
            .values(attempts=Fire.attempts + 1, claimed_until=now + CLAIM)
            .returning(Fire.id)
        )
    )
    rows = session.execute(
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
        )
        .join(BackupSpec, BackupSpec.id == Fire.spec_id)
        .where(Fire.id.in_(claimed))
        .order_by(Fire.scheduled_at, Fire.id)
    ).all()
    return [FireJob(*row, claimed_until=now + CLAIM) for row in rows]


def start_fires(services: Services, jobs: Sequence[FireJob]) -> list[FireOutcome]:
    """Start a create_backup for each claimed fire, unless one already runs for its spec.

    Conductor is asked once for the open workflows of all the specs concerned, and once
    more (closed ones included) for the specs whose fires were attempted before.
    """
    if not jobs:
        return []
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
        failed = [_unavailable(job, str(exc)) for job in jobs]
        _record_outcomes(services, failed)
        return failed

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

    to_start: list[FireJob] = []
    for job in jobs:
        if job.spec_name in busy or any(
            w.status.is_open and w.workflow_id not in dead
            for w in open_by_name.get(job.spec_name, [])
        ):
            running = [
                w.workflow_id
                for w in open_by_name.get(job.spec_name, [])
                if w.status.is_open and w.workflow_id not in dead
            ]
            outcomes.append(
                FireOutcome(
                    job.fire_id,
                    job.spec_name,
                    job.scheduled_at,
                    FireStatus.SKIPPED,
                    skip_reason=SkipReason.RUNNING,
                    workflow_id=running[0] if running else None,
                )
            )
        else:
            busy.add(job.spec_name)
            to_start.append(job)

    version = DEFINITIONS.workflow_version(CREATE_BACKUP)
    with ThreadPoolExecutor(max_workers=START_CONCURRENCY) as pool:
        outcomes.extend(pool.map(lambda job: _start_one(services, job, version), to_start))
    _record_outcomes(services, outcomes)
    return outcomes


def _unlisted_open_runs(
    services: Services, names: Sequence[str], listed: Mapping[str, Sequence[WorkflowRun]]
) -> list[WorkflowRun]:
    """Runs the open lookup leaves out but Backtor started and has not seen end: PAUSED ones.

    Conductor's correlated lookup without closed runs lists RUNNING ones only. A run Backtor
    recorded as started, that is neither listed nor finished, still holds its spec.
    """
    known = {run.workflow_id for runs in listed.values() for run in runs}
    with services.db() as session:
        unfinished = session.execute(
            select(Fire.workflow_id, BackupSpec.name)
            .join(BackupSpec, BackupSpec.id == Fire.spec_id)
            .where(
                BackupSpec.name.in_(list(names)),
                Fire.status == FireStatus.STARTED.value,
                Fire.outcome.is_(None),
                Fire.workflow_id.is_not(None),
            )
        ).all()
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


def _passed_over(jobs: Sequence[FireJob], now: datetime) -> list[FireOutcome]:
    """Scheduled fires that must not start: out of their grace, or superseded.

    A fire left PENDING (Conductor refused or was down) keeps its spec's misfire grace, and
    of several PENDING fires of one spec only the latest may start: a late scheduler never
    catches up in a burst. Manual fires are started whenever they can be.
    """
    latest: dict[str, datetime] = {}
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
        )
        for job in jobs
        if not job.manual and job.scheduled_at != latest.get(job.spec_name)
    ]


def _started_for(job: FireJob, workflows: Iterable[WorkflowRun]) -> str | None:
    for workflow in workflows:
        if workflow.fire_id == job.fire_id:
            return workflow.workflow_id
    return None


def _start_one(services: Services, job: FireJob, version: int) -> FireOutcome:
    if job.claimed_until is not None and services.clock() > job.claimed_until - START_MARGIN:
        # Too late to start under this claim: a start still under way when it lapses could
        # land after another attempt looked for it, and start the fire twice.
        return _unavailable(job, "the claim lapsed before the start; tried again next pass")
    try:
        workflow_id = services.conductor.start_workflow(
            CREATE_BACKUP,
            version=version,
            correlation_id=job.spec_name,
            input={
                "backupName": job.spec_name,
                "workerConfig": job.worker_config,
                "timeoutSeconds": job.timeout_seconds,
                "scheduledTime": job.scheduled_at.isoformat().replace("+00:00", "Z"),
                "fireId": job.fire_id,
                "manual": job.manual,
            },
        )
    except ConductorUnavailable as exc:
        return _unavailable(job, str(exc))
    except ConductorRefused as exc:  # an answer Conductor should not give: keep the fire, say why
        log.error(
            "spec %s: could not start create_backup: %s",
            job.spec_name,
            exc,
            extra={"backup": job.spec_name},
        )
        return _unavailable(job, str(exc), refused=True)
    log.info(
        "spec %s: create_backup %s started for %s",
        job.spec_name,
        workflow_id,
        job.scheduled_at.isoformat(),
        extra={"backup": job.spec_name, "workflow_id": workflow_id},
    )
    return _started(job, workflow_id, services.clock())


def _started(job: FireJob, workflow_id: str, at: datetime | None = None) -> FireOutcome:
    return FireOutcome(
        job.fire_id,
        job.spec_name,
        job.scheduled_at,
        FireStatus.STARTED,
        workflow_id=workflow_id,
        started_at=at,
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
    )


def give_up_fire(session: Session, fire_id: int, now: datetime) -> None:
    """Close a manual fire that could not start (its caller was told so)."""
    spec_id = session.execute(
        update(Fire)
        .where(Fire.id == fire_id, Fire.status == FireStatus.PENDING.value)
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


def _record_outcomes(services: Services, outcomes: Sequence[FireOutcome]) -> None:
    now = services.clock()
    fire_rows: list[dict[str, Any]] = []
    spec_rows: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        row: dict[str, Any] = {
            "id": outcome.fire_id,
            "status": outcome.status.value,
            "claimed_until": None,
            "error": outcome.error,
        }
        if outcome.status is FireStatus.STARTED:
            row |= {"workflow_id": outcome.workflow_id, "started_at": outcome.started_at or now}
            spec_rows[outcome.spec_name] = {"running_create_workflow_id": outcome.workflow_id}
        elif outcome.status is FireStatus.SKIPPED:
            assert outcome.skip_reason is not None
            row["skip_reason"] = outcome.skip_reason.value
            spec_rows.setdefault(outcome.spec_name, {}).update(
                last_skip_at=now, last_skip_reason=outcome.skip_reason.value
            )
            log.info(
                "spec %s: fire %s skipped (%s)",
                outcome.spec_name,
                outcome.scheduled_at.isoformat(),
                outcome.skip_reason.value,
                extra={"backup": outcome.spec_name, "workflow_id": outcome.workflow_id},
            )
        fire_rows.append(row)
    with services.db.begin() as session:
        if fire_rows:
            session.execute(update(Fire), fire_rows)
            _count_outcomes(session, outcomes, fire_rows)
        for name, values in spec_rows.items():
            session.execute(update(BackupSpec).where(BackupSpec.name == name).values(**values))


def _count_outcomes(
    session: Session, outcomes: Sequence[FireOutcome], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Trigger, skip and warning counters and the schedule lag, in the outcomes' transaction."""
    for outcome, row in zip(outcomes, rows, strict=True):
        name = outcome.spec_name
        if outcome.status is FireStatus.STARTED:
            counters.increment(session, counters.TRIGGER, name, "success")
            lag = row["started_at"] - outcome.scheduled_at
            counters.observe_schedule_lag(session, lag.total_seconds())
        elif outcome.status is FireStatus.SKIPPED:
            reason = outcome.skip_reason.value if outcome.skip_reason else "unknown"
            counters.increment(session, counters.TRIGGER, name, "error")
            counters.increment(session, counters.SKIPPED, name, reason)
            counters.increment(session, counters.WARN, name, "warning")
        else:  # still PENDING: Conductor unreachable or refusing; tried again later
            counters.increment(session, counters.TRIGGER, name, "error")
            counters.increment(session, counters.WARN, name, "error")


# -- a manual trigger's start ---------------------------------------------------------------


@dataclass(frozen=True)
class ManualStart:
    """A manual fire's start. `unconfirmed`: the start's answer was lost and Conductor could
    not be asked whether it happened, so the fire stays PENDING for the scheduler."""

    outcome: FireOutcome
    unconfirmed: bool = False


def start_manual_fire(services: Services, job: FireJob) -> ManualStart:
    """start_fires for one claimed manual fire, never losing track of a start that happened.

    A start whose answer is lost (timeout, garbled 2xx) may have created the workflow. The
    trigger cannot wait for the scheduler's retry (it must answer now), so it asks Conductor
    at once for the spec's create_backup runs carrying this fire's id: found, the fire is
    STARTED with it; not found, nothing started; the question failing too, `unconfirmed`.
    """
    checked = _LostStartLookup(services.conductor, job.fire_id)
    (outcome,) = start_fires(dataclass_replace(services, conductor=cast(Conductor, checked)), [job])
    unconfirmed = checked.unconfirmed and outcome.status is FireStatus.PENDING
    return ManualStart(outcome, unconfirmed)


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
            if run.fire_id == self._fire_id:
                return run.workflow_id
        return None
