"""Scheduled verification: a spec's verifyCronString fire starts verify_backup runs
(docs/restore.md, "Scheduled verification").

A spec whose `next_verify_at` has come is acted on once: in one transaction, a conditional
UPDATE moves `next_verify_at` to the cron's first fire after now (only while it still holds
the due time this pass read: of two replicas or passes, one wins, the other does nothing),
and the backups backtor.core.verification chooses are claimed as the API claims them
(backtor.scheduling.restores.claim: COMPLETED, no verification open, never one being
removed). After the commit each claimed run is started, as the API starts it; the pass
follows it to its verdict (restores.follow_runs). Fires missed while no pass ran (or while
the spec was paused) are acted on once, as the latest of them, never in a burst.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, exists, select, update
from sqlalchemy.orm import Session

from backtor.core.cron import CronError
from backtor.core.errors import Conflict, NotFound
from backtor.core.verification import Candidate, Choice, choose, verify_timing
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services
from backtor.scheduling.restores import OPEN_RUN, VERIFY, RunJob, claim, start
from backtor.scheduling.shards import WHOLE, Part, owned

log = logging.getLogger(__name__)

# Specs acted on per pass at most, and the time the step takes new specs for: what is left
# is still due, and the next pass takes it (a pass beats every few seconds).
SPECS_PER_PASS = 50
STEP_BUDGET = timedelta(seconds=2)
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Acted:
    """One verifyCron fire acted on: its time and the runs claimed for it."""

    spec_name: str
    fire: datetime
    choice: Choice
    jobs: tuple[RunJob, ...]


def start_scheduled_verifications(services: Services, part: Part = WHOLE) -> None:
    """The pass's stage: every due verifyCron fire claims its backups and starts their runs."""
    now = services.clock()
    stop_at = now + STEP_BUDGET
    statement, shard = part.pick(_DUE, _DUE_SHARDED)
    with services.db() as session:
        due = session.execute(statement, {"now": now, "limit": SPECS_PER_PASS, **shard}).all()
    for spec_id, due_at in due:
        if services.clock() >= stop_at:
            break  # the rest stays due for the next pass
        assert due_at is not None  # selected so
        acted = act_on_fire(services, spec_id, due_at)
        if acted is not None:
            for job in acted.jobs:
                start(services, job, None)


# The stage's reads and its fence, built once: the first runs every pass.
_DUE_NOW = and_(
    BackupSpec.next_verify_at.is_not(None),
    BackupSpec.next_verify_at <= bindparam("now", type_=UTCDateTime()),
    BackupSpec.enabled.is_(True),
    BackupSpec.deleting.is_(False),
)
# Whether a verifyCron fire is due (the pass's look-ahead, tick.py).
WORK = exists().where(_DUE_NOW)
_DUE = (
    select(BackupSpec.id, BackupSpec.next_verify_at)
    .where(_DUE_NOW)
    .order_by(BackupSpec.next_verify_at, BackupSpec.id)
    .limit(bindparam("limit"))
)
_DUE_SHARDED = _DUE.where(owned(BackupSpec.id))
_CANDIDATES = (
    select(Backup.id, Backup.scheduled_at, Backup.last_verified_at, Backup.verify_run_status)
    .where(Backup.spec_id == bindparam("spec_id"), Backup.status == BackupStatus.COMPLETED.value)
    .order_by(Backup.scheduled_at.desc(), Backup.id.desc())
)


def act_on_fire(services: Services, spec_id: int, due_at: datetime) -> Acted | None:
    """Move the spec's due verifyCron fire on and claim what it verifies, in one transaction.

    None when another pass acted on this due time first (or the spec changed meanwhile).
    """
    with services.db.begin() as session:
        spec = session.get(BackupSpec, spec_id, populate_existing=True)
        if spec is None or spec.verify_cron_string is None:
            return None
        now = services.clock()
        try:
            timing = verify_timing(
                spec.name, spec.verify_cron_string, spec.timezone, spec.jitter_seconds
            )
            fire = timing.latest_at_or_before(now) or due_at
            following: datetime | None = timing.next_after(now)
            period_start = timing.latest_at_or_before(fire - _TICK)
        except (CronError, OverflowError) as exc:
            # Stored before a rule changed, or past the calendar's end: verify by it no more.
            log.warning("spec %s: verifyCronString does not evaluate: %s", spec.name, exc)
            _move_on(session, spec_id, due_at, None)
            return None
        if not _move_on(session, spec_id, due_at, following):
            return None  # another pass acted on it, or a PUT moved it
        rate = spec.verify_sample_rate
        rate = services.settings.verify_sample_rate if rate is None else rate
        choice = choose(
            _candidates(session, spec_id),
            spec_name=spec.name,
            fire=fire,
            period_start=period_start,
            rate=rate,
        )
        jobs = _claim_all(session, spec, choice.backup_ids, now)
    if jobs:
        log.info(
            "spec %s: verifyCron fire at %s verifies backups %s",
            spec.name,
            fire.isoformat(),
            ", ".join(str(job.backup_id) for job in jobs),
            extra={"backup": spec.name},
        )
    return Acted(spec.name, fire, choice, tuple(jobs))


def _move_on(session: Session, spec_id: int, due_at: datetime, following: datetime | None) -> bool:
    """The fence: next_verify_at moves on only while it still holds the due time read."""
    won = session.execute(
        update(BackupSpec)
        .where(BackupSpec.id == spec_id, BackupSpec.next_verify_at == due_at)
        .values(next_verify_at=following)
        .returning(BackupSpec.id)
    ).first()
    return won is not None


def _candidates(session: Session, spec_id: int) -> list[Candidate]:
    rows = session.execute(_CANDIDATES, {"spec_id": spec_id}).all()
    return [
        Candidate(backup_id, scheduled_at, verified_at, run_status in OPEN_RUN)
        for backup_id, scheduled_at, verified_at, run_status in rows
    ]


def _claim_all(
    session: Session, spec: BackupSpec, backup_ids: tuple[int, ...], now: datetime
) -> list[RunJob]:
    """Claim each chosen backup as the API does; one that changed meanwhile (retention
    marked it, a verification of it started) is passed over."""
    jobs: list[RunJob] = []
    for backup_id in backup_ids:
        try:
            jobs.append(claim(session, spec, backup_id, VERIFY, now))
        except (Conflict, NotFound) as exc:
            log.info("spec %s: backup %s not verified: %s", spec.name, backup_id, exc)
    return jobs
