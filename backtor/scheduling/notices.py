"""Failure notifications: the outbox, its starter and follower, the overdue check, delivery.

An event writes a `notice` row (PENDING) in its own transaction (`notify`), and only when a
receiver is configured (the spec's notifyUrl, else BACKTOR_NOTIFY_URL): nothing is sent
from there, so a slow or dead receiver never holds up a record. The scheduler's pass, after
its main work, starts one `backtor_notify` workflow per PENDING notice, a few at a time
(`notice_step`); its `deliver_notice` task POSTs the notice (`deliver`), and Conductor
retries a failed POST with exponential backoff. Passes follow the started notices until
their workflow ends: DELIVERED, or FAILED (counted in backtor_notify_failures_total; an
operator may still retry the workflow in Conductor's UI, which delivers it then).

Idempotency: each notice has a key, unique in the table (a second `notify` with the same
key writes nothing), used as the workflow's correlationId and sent as `Idempotency-Key`; a
start whose answer was lost is found by it and adopted, never started twice (docs/
notifications.md). A receiver's URL can hold a token: it stays in the database, is never
logged (only `redact(url)` is) and never reaches Conductor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, case, exists, func, or_, select, update
from sqlalchemy.orm import Session

from backtor.conductor import webhooks
from backtor.conductor.names import BACKTOR_NOTIFY
from backtor.conductor.payloads import WorkflowRun, WorkflowStatus
from backtor.conductor.registration import DEFINITIONS
from backtor.conductor.results import TaskOutcome, completed, failed, terminal
from backtor.core.errors import (
    BacktorError,
    ConductorRefused,
    ConductorUnavailable,
)
from backtor.core.notices import Notice as Payload
from backtor.core.notices import NoticeKind, body_of, headers_for
from backtor.db import counters
from backtor.db.inserts import dialect_insert
from backtor.db.models import Backup, BackupSpec, Notice, NoticeStatus
from backtor.db.types import UTCDateTime
from backtor.observability.freshness import (
    MIN_PERIOD_SECONDS,
    OVERDUE_FACTOR,
    deadline,
    judge,
    newest_successes,
)
from backtor.runtime.services import SETTINGS_INFO, Services
from backtor.runtime.settings import Settings
from backtor.scheduling.following import ended_runs

log = logging.getLogger(__name__)

# A failure, a timeout, an auto-pause, an overdue spec or a failed removal: the next backup
# that succeeds sends SPEC_RECOVERED (BackupSpec.alerting).
ALERTING = frozenset(
    {
        NoticeKind.BACKUP_FAILED,
        NoticeKind.BACKUP_TIMED_OUT,
        NoticeKind.REMOVAL_FAILED,
        NoticeKind.SPEC_AUTO_PAUSED,
        NoticeKind.SPEC_OVERDUE,
    }
)
# A removal is retried for ever with a growing delay: its first failure notifies, and the
# third, when the backup shows REMOVE_FAILED (backtor.scheduling.removals.FAILURES_SHOWN).
REMOVAL_ATTEMPTS_NOTIFIED = frozenset({1, 3})
MAX_KEY_CHARS = 200  # notice.key
MAX_ERROR_CHARS = 500  # an error's text in a payload's details
# What a pass does, at most: notices started, started ones followed.
START_BATCH = 10
FOLLOW_BATCH = 50
# The overdue check: at most this often per process, over this many specs (a rolling
# window by id), computing new expected periods for at most this long.
OVERDUE_EVERY = timedelta(seconds=15)
OVERDUE_BATCH = 500
OVERDUE_PERIOD_BUDGET_SECONDS = 0.5
# No spec can be overdue sooner than this after its schedule began to apply.
_SHORTEST_LIMIT = timedelta(seconds=OVERDUE_FACTOR * MIN_PERIOD_SECONDS)
DUPLICATE_REASON = "a duplicate notification of a notice that has its own: terminated by Backtor"

Details = Mapping[str, str | int | None]


# -- writing notices (in the caller's transaction) ---------------------------------------


def receiver_of(session: Session, spec: BackupSpec) -> str | None:
    """The spec's notifyUrl, else BACKTOR_NOTIFY_URL (from the settings the session carries)."""
    if spec.notify_url:
        return spec.notify_url
    settings = session.info.get(SETTINGS_INFO)
    return settings.notify_url if isinstance(settings, Settings) else None


def notify(
    session: Session,
    spec: BackupSpec,
    kind: NoticeKind | str,
    key: str,
    workflow_id: str | None,
    details: Details,
    now: datetime,
) -> bool:
    """Write a PENDING notice in the caller's transaction, when a receiver is configured.

    Idempotent on `key` (insert-or-ignore on its unique index): calling it again for the
    same event writes nothing. An alerting kind marks the spec `alerting` (its next success
    sends SPEC_RECOVERED). Returns True when this call wrote the notice.
    """
    kind = NoticeKind(kind)
    url = receiver_of(session, spec)
    if url is None:
        return False
    written = session.execute(
        dialect_insert(session, Notice)
        .values(
            key=bounded_key(key),
            spec_name=spec.name,
            kind=kind.value,
            occurred_at=now,
            workflow_id=workflow_id,
            details=json.dumps(dict(details), sort_keys=True),
            url=url,
            status=NoticeStatus.PENDING.value,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(Notice.id)
    ).first()
    if kind in ALERTING:
        spec.alerting = True
    elif kind is NoticeKind.SPEC_RECOVERED:
        spec.alerting = False
    return written is not None


def bounded_key(key: str) -> str:
    """The key as it is, or, beyond the column's width, its prefix and a digest of it all."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: MAX_KEY_CHARS - len(digest) - 1]}~{digest}"


def backup_failed(
    session: Session,
    spec: BackupSpec,
    status: str,
    workflow_id: str,
    error: str | None,
    at: datetime,
) -> bool:
    """A create_backup ended with no data: FAILED (or TERMINATED), or TIMED_OUT."""
    kind = NoticeKind.BACKUP_TIMED_OUT if status == "TIMED_OUT" else NoticeKind.BACKUP_FAILED
    details = {"status": str(status), "error": _short(error)}
    return notify(session, spec, kind, f"{kind.value}:{workflow_id}", workflow_id, details, at)


def backup_succeeded(session: Session, spec: BackupSpec, backup: Backup) -> bool:
    """A backup was recorded: the first one after an alert sends SPEC_RECOVERED."""
    if not spec.alerting:
        return False
    kind = NoticeKind.SPEC_RECOVERED
    key = f"{kind.value}:{backup.backup_task_id or backup.id}"
    details: dict[str, str | int | None] = {"backupId": backup.id, "dataId": backup.data_id}
    at = backup.end_time or backup.scheduled_at
    written = notify(session, spec, kind, key, backup.create_workflow_id, details, at)
    spec.alerting = False  # also when no receiver is configured any more
    return written


def auto_paused(
    session: Session,
    spec: BackupSpec,
    failures: int,
    reason: str,
    now: datetime,
    workflow_id: str | None = None,
) -> bool:
    """The spec disabled itself after `failures` consecutive failed backups."""
    kind = NoticeKind.SPEC_AUTO_PAUSED
    key = f"{kind.value}:{spec.name}:{now.isoformat()}"
    details = {"consecutiveFailures": failures, "pausedReason": _short(reason)}
    return notify(session, spec, kind, key, workflow_id, details, now)


def removal_failed(
    session: Session,
    spec_name: str,
    backup_id: int,
    workflow_id: str,
    attempt: int,
    status: str,
    reason: object,
    now: datetime,
) -> bool:
    """A remove_backup failed (the backup's `attempt`-th); its first and third notify."""
    if attempt not in REMOVAL_ATTEMPTS_NOTIFIED:
        return False
    spec = session.scalar(select(BackupSpec).where(BackupSpec.name == spec_name))
    if spec is None:
        return False
    kind = NoticeKind.REMOVAL_FAILED
    details: dict[str, str | int | None] = {
        "backupId": backup_id,
        "attempt": attempt,
        "status": str(status),
        "error": _short(None if reason is None else str(reason)),
    }
    return notify(session, spec, kind, f"{kind.value}:{workflow_id}", workflow_id, details, now)


def _short(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR_CHARS]


# -- the scheduler's step ----------------------------------------------------------------


@dataclass
class _Memory:
    """What one process remembers between passes: when to look for overdue specs next, and
    where the rolling window over the specs stopped."""

    overdue_at: datetime | None = None
    after_id: int = 0


_MEMORY: dict[int, tuple[weakref.ref[Services], _Memory]] = {}


def _memory(services: Services) -> _Memory:
    entry = _MEMORY.get(id(services))
    if entry is None or entry[0]() is not services:
        for stale in [k for k, (ref, _) in _MEMORY.items() if ref() is None]:
            del _MEMORY[stale]
        entry = (weakref.ref(services), _Memory())
        _MEMORY[id(services)] = entry
    return entry[1]


def notice_step(services: Services, until: datetime | None = None, *, outbox: bool = True) -> None:
    """The pass's last step: overdue check, follow started notices, start pending ones.

    Each part is bounded (batches, and no new start after `until`) and stands alone: a
    failure is logged and the pass goes on, so notifications never hold up scheduling.
    `outbox` False: the pass knows no notice was open; the outbox is read only if the
    overdue check writes one.
    """
    parts: tuple[tuple[str, Callable[[], object]], ...] = (
        ("overdue check", lambda: check_overdue(services)),
        ("follow", lambda: follow_notices(services)),
        ("start", lambda: start_pending_notices(services, until=until)),
    )
    for name, part in parts:
        if until is not None and services.clock() >= until:
            return
        try:
            written = part()
        except BacktorError as exc:
            log.warning("notices: %s stopped early this pass: %s", name, exc)
        except Exception as exc:  # isolated; the text may hold a statement's parameters
            log.warning("notices: %s failed this pass (%s)", name, type(exc).__name__)
        else:
            outbox = outbox or bool(written)  # the overdue check wrote a notice: read it
            if not outbox:
                return


def check_overdue(services: Services, limit: int = OVERDUE_BATCH) -> int:
    """Notify each spec that went overdue (the /ui and alert rule), once per episode.

    At most every OVERDUE_EVERY, over `limit` specs at a time (a rolling window by id, so
    every spec is looked at in turn); only specs with a receiver are read. An episode is
    the time since the judgement's reference (the last success, or when the schedule began
    to apply): `overdue_notified_at` at or after it means this episode was notified.
    Returns how many notices were written.
    """
    now = services.clock()
    memory = _memory(services)
    if memory.overdue_at is not None and now < memory.overdue_at:
        return 0
    memory.overdue_at = now + OVERDUE_EVERY
    with services.db.begin() as session:
        specs = list(
            session.scalars(
                _overdue_candidates(services.settings.notify_url is None),
                {
                    "after_id": memory.after_id,
                    "now": now,
                    "settled": now - _SHORTEST_LIMIT,
                    "limit": limit,
                },
            )
        )
        last = newest_successes(session, [spec.id for spec in specs])
    memory.after_id = specs[-1].id if len(specs) >= limit else 0
    until = deadline(OVERDUE_PERIOD_BUDGET_SECONDS)
    overdue = []
    for spec in specs:  # outside the transaction: expected periods take milliseconds each
        fresh = judge(spec, last.get(spec.id), now, until)
        if fresh.overdue and fresh.since is not None and fresh.limit_seconds is not None:
            notified = spec.overdue_notified_at
            if notified is None or notified < fresh.since:
                overdue.append((spec.id, fresh.since, fresh.limit_seconds, last.get(spec.id)))
    written = 0
    for spec_id, since, limit_seconds, last_success in overdue:
        with services.db.begin() as session:
            written += _notify_overdue(session, spec_id, since, limit_seconds, last_success, now)
    return written


@cache
def _overdue_candidates(own_url_only: bool) -> Any:
    """Active specs whose schedule applies for longer than the shortest overdue limit; with
    no BACKTOR_NOTIFY_URL, those with a notifyUrl of their own. Built once per case."""
    now = bindparam("now", type_=UTCDateTime())
    settled = bindparam("settled", type_=UTCDateTime())  # now - the shortest limit
    conditions = [
        BackupSpec.id > bindparam("after_id"),
        BackupSpec.enabled.is_(True),
        BackupSpec.deleting.is_(False),
        or_(BackupSpec.from_date.is_(None), BackupSpec.from_date <= now),
        or_(BackupSpec.to_date.is_(None), BackupSpec.to_date > now),
        BackupSpec.created_at <= settled,
        BackupSpec.last_update <= settled,
    ]
    if own_url_only:
        conditions.append(BackupSpec.notify_url.is_not(None))
    return select(BackupSpec).where(*conditions).order_by(BackupSpec.id).limit(bindparam("limit"))


def _notify_overdue(
    session: Session,
    spec_id: int,
    since: datetime,
    limit_seconds: float,
    last_success: datetime | None,
    now: datetime,
) -> int:
    """Mark the episode notified (only if no one did meanwhile), then write its notice."""
    claimed = session.execute(
        update(BackupSpec)
        .where(
            BackupSpec.id == spec_id,
            BackupSpec.enabled.is_(True),
            or_(BackupSpec.overdue_notified_at.is_(None), BackupSpec.overdue_notified_at < since),
        )
        .values(overdue_notified_at=now)
        .returning(BackupSpec.id)
        .execution_options(synchronize_session=False)
    ).first()
    spec = session.get(BackupSpec, spec_id) if claimed is not None else None
    if spec is None:
        return 0
    kind = NoticeKind.SPEC_OVERDUE
    details = {
        "lastSuccessAt": None if last_success is None else last_success.isoformat(),
        "since": since.isoformat(),
        "limitSeconds": int(limit_seconds),
    }
    key = f"{kind.value}:{spec.name}:{since.isoformat()}"
    written = notify(session, spec, kind, key, None, details, now)
    log.warning(
        "spec %s: no successful backup since %s (limit %d s): overdue%s",
        spec.name,
        since.isoformat(),
        int(limit_seconds),
        ", notice written" if written else "",
        extra={"backup": spec.name},
    )
    return int(written)


# The outbox's reads, built once: they run every pass.
_PENDING = (
    select(Notice.id, Notice.key, Notice.spec_name, Notice.kind)
    .where(Notice.status == NoticeStatus.PENDING.value)
    .order_by(Notice.id)
    .limit(bindparam("limit"))
)
_STARTED = (
    select(Notice.id, Notice.key, Notice.spec_name, Notice.kind, Notice.notify_workflow_id)
    .where(Notice.status == NoticeStatus.STARTED.value)
    .order_by(Notice.id)
    .limit(bindparam("limit"))
)
# Whether the outbox has a notice to start or follow (the pass's look-ahead, tick.py).
WORK = exists().where(Notice.status.in_((NoticeStatus.PENDING.value, NoticeStatus.STARTED.value)))


def start_pending_notices(
    services: Services, limit: int = START_BATCH, until: datetime | None = None
) -> int:
    """Start backtor_notify for PENDING notices, oldest first; returns how many were started
    or adopted.

    The notices' keys are looked up first among the backtor_notify runs, closed ones too:
    a start whose answer was lost is adopted, never repeated. A Conductor error stops the
    batch (the rest waits for the next pass).
    """
    with services.db.begin() as session:
        rows = session.execute(_PENDING, {"limit": limit}).all()
    if not rows:
        return 0
    found = services.conductor.workflows_by_correlation(
        BACKTOR_NOTIFY, sorted({row.key for row in rows}), include_closed=True
    )
    version = DEFINITIONS.workflow_version(BACKTOR_NOTIFY)
    started = 0
    for row in rows:
        if until is not None and services.clock() >= until:
            break
        workflow_id = _adoptable([r for r in found.get(row.key, []) if _carries(r, row.key)])
        adopted = workflow_id is not None
        if workflow_id is None:
            workflow_id = services.conductor.start_workflow(
                BACKTOR_NOTIFY,
                version=version,
                correlation_id=row.key,
                input={"noticeKey": row.key, "event": row.kind, "backupName": row.spec_name},
            )
        with services.db.begin() as session:
            recorded = session.execute(
                update(Notice)
                .where(Notice.id == row.id, Notice.notify_workflow_id.is_(None))
                .values(
                    notify_workflow_id=workflow_id,
                    # The run may have delivered it already: DELIVERED stays.
                    status=case(
                        (Notice.status == NoticeStatus.PENDING.value, NoticeStatus.STARTED.value),
                        else_=Notice.status,
                    ),
                )
                .returning(Notice.id)
                .execution_options(synchronize_session=False)
            ).first()
        if recorded is None and not adopted:
            _stop_duplicate(services, row.key, workflow_id)
            continue
        started += 1
        log.info(
            "notice %s (%s) for spec %s: backtor_notify %s %s",
            row.key,
            row.kind,
            row.spec_name,
            workflow_id,
            "adopted" if adopted else "started",
            extra={"backup": row.spec_name, "workflow_id": workflow_id},
        )
    return started


def _carries(run: WorkflowRun, key: str) -> bool:
    return run.input.get("noticeKey") == key


def _adoptable(runs: list[WorkflowRun]) -> str | None:
    """The run to adopt for a notice: an open one, else one that completed, else any."""
    for wanted in (lambda r: r.status.is_open, lambda r: r.status is WorkflowStatus.COMPLETED):
        for run in runs:
            if wanted(run):
                return run.workflow_id
    return runs[0].workflow_id if runs else None


def _stop_duplicate(services: Services, key: str, workflow_id: str) -> None:
    """Another attempt recorded its run for this notice first: terminate this one."""
    try:
        services.conductor.terminate_workflow(workflow_id, DUPLICATE_REASON)
    except (ConductorRefused, ConductorUnavailable) as exc:
        log.warning("notice %s: duplicate backtor_notify %s not stopped: %s", key, workflow_id, exc)
        return
    log.warning("notice %s: duplicate backtor_notify %s terminated", key, workflow_id)


def follow_notices(services: Services, limit: int = FOLLOW_BATCH) -> None:
    """Record how started notices' workflows ended: DELIVERED, or FAILED and counted."""
    with services.db.begin() as session:
        rows = session.execute(_STARTED, {"limit": limit}).all()
    if not rows:
        return

    def unseen(row: Any, exc: Exception) -> None:
        log.warning("notice %s: backtor_notify not followed this pass: %s", row.key, exc)

    for row, run in ended_runs(
        services.conductor,
        BACKTOR_NOTIFY,
        rows,
        correlation_of=lambda row: row.key,
        workflow_id_of=lambda row: row.notify_workflow_id,
        gone="the workflow is gone from Conductor",
        unseen=unseen,
    ):
        with services.db.begin() as session:
            _finish(session, row, run.status, run.reason)


def _finish(session: Session, row: Any, status: WorkflowStatus, reason: str | None) -> None:
    delivered = status is WorkflowStatus.COMPLETED
    outcome = NoticeStatus.DELIVERED if delivered else NoticeStatus.FAILED
    changed = session.execute(
        update(Notice)
        .where(Notice.id == row.id, Notice.status == NoticeStatus.STARTED.value)
        .values(status=outcome.value)
        .returning(Notice.id)
        .execution_options(synchronize_session=False)
    ).first()
    if changed is None:
        return
    counters.increment(
        session, counters.NOTIFY_DELIVERED if delivered else counters.NOTIFY_FAILURES
    )
    if not delivered:
        log.warning(
            "notice %s (%s) for spec %s not delivered: backtor_notify %s ended %s (%s); "
            "retry it in Conductor's UI",
            row.key,
            row.kind,
            row.spec_name,
            row.notify_workflow_id,
            status.value,
            reason or "no reason given",
            extra={"backup": row.spec_name, "workflow_id": row.notify_workflow_id},
        )


# -- delivery: what the deliver_notice task does --------------------------------------------

Poster = Callable[[str, bytes, Mapping[str, str]], webhooks.Posted]


def _post(url: str, body: bytes, headers: Mapping[str, str]) -> webhooks.Posted:
    return webhooks.post(url, body, headers)


def deliver(
    services: Services,
    data: Mapping[str, Any],
    workflow_id: str,
    post: Poster = _post,
) -> TaskOutcome:
    """POST the notice named by the task's `noticeKey`, signed; 2xx delivers it.

    Anything else fails the task (FAILED), which Conductor retries with backoff. A notice
    this database does not hold (another installation's on a shared Conductor, or gone)
    fails terminally. Delivering one that was delivered already sends it again (the
    receiver drops it by its Idempotency-Key).
    """
    key = str(data.get("noticeKey") or "")
    if not key:
        return terminal("the task's input has no noticeKey")
    with services.db() as session:
        row = session.scalar(select(Notice).where(Notice.key == key))
    if row is None:
        return terminal(f"notice {key} is not in this Backtor's database")
    payload = Payload(
        kind=NoticeKind(row.kind),
        spec=row.spec_name,
        occurred_at=row.occurred_at,
        key=row.key,
        workflow_id=row.workflow_id,
        details=json.loads(row.details or "{}"),
    )
    body = body_of(payload)
    timestamp = int(services.clock().timestamp())
    headers = headers_for(payload, body, services.settings.notify_secret, timestamp)
    posted = post(row.url, body, headers)
    extra = {"backup": row.spec_name, "workflow_id": workflow_id}
    if not posted.delivered:
        error = posted.error or f"{webhooks.redact(row.url)} did not accept the notice"
        log.warning("notice %s (%s) not delivered: %s", key, row.kind, error, extra=extra)
        return failed(error)
    with services.db.begin() as session:
        changed = session.execute(
            update(Notice)
            .where(Notice.id == row.id, Notice.status != NoticeStatus.DELIVERED.value)
            .values(
                status=NoticeStatus.DELIVERED.value,
                notify_workflow_id=func.coalesce(Notice.notify_workflow_id, workflow_id),
            )
            .returning(Notice.id)
            .execution_options(synchronize_session=False)
        ).first()
        if changed is not None:
            counters.increment(session, counters.NOTIFY_DELIVERED)
    log.info(
        "notice %s (%s) delivered to %s: HTTP %s",
        key,
        row.kind,
        webhooks.redact(row.url),
        posted.status,
        extra=extra,
    )
    return completed({"delivered": True, "httpStatus": posted.status})
