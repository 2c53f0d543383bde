"""Database access for specs and backups: every query in one module, every value bound.

Functions take a Session and leave the commit to the caller (one request, one unit of
work), except where a commit is part of the contract, which the docstring then says.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, literal, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backtor.core.errors import Conflict, NotFound
from backtor.core.retention import COMPLETED, BackupRecord
from backtor.core.specs import SpecValues, compute_next_fire_at
from backtor.core.verification import next_verify_after
from backtor.db.models import (
    UNREMOVED_STATUSES,
    Backup,
    BackupSpec,
    BackupStatus,
    Fire,
    FireStatus,
)

log = logging.getLogger(__name__)


class SpecExists(Conflict):
    """A spec with this name is already stored."""

    def __init__(self, name: str) -> None:
        super().__init__(f"backup spec {name!r} already exists", "name")
        self.name = name


class SpecNotFound(NotFound):
    """No spec has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"backup spec {name!r} not found", "name")
        self.name = name


_RETENTION_COLUMNS = {
    "retentionMinutely": "retention_minutely",
    "retentionHourly": "retention_hourly",
    "retentionDaily": "retention_daily",
    "retentionWeekly": "retention_weekly",
    "retentionMonthly": "retention_monthly",
    "retentionYearly": "retention_yearly",
}


class CursorNotFound(NotFound):
    """A page cursor (`after`) that names no row of the listing.

    Not found (404), not invalid: the cursor has the right form, the backup it names is
    not there, as a path naming no spec.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "after")


def _by_code_point(session: Session, column: Any) -> Any:
    """`column` compared by code point: PostgreSQL's "C" collation; SQLite's BINARY is."""
    return column.collate("C") if session.get_bind().dialect.name == "postgresql" else column


def list_specs(
    session: Session,
    *,
    enabled: bool | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[BackupSpec]:
    """Specs ordered by name, by code point on every backend (collations differ).

    `after` (a name, present or not) and `limit` page the list in SQL.
    """
    name = _by_code_point(session, BackupSpec.name)
    query = select(BackupSpec).order_by(name)
    if enabled is not None:
        query = query.where(BackupSpec.enabled == enabled)
    if after is not None:
        query = query.where(name > after)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def get_spec(session: Session, name: str, *, for_update: bool = False) -> BackupSpec | None:
    query = select(BackupSpec).where(BackupSpec.name == name)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def require_spec(session: Session, name: str, *, for_update: bool = False) -> BackupSpec:
    """The spec named `name`, or SpecNotFound (the API's 404 on `name`)."""
    spec = get_spec(session, name, for_update=for_update)
    if spec is None:
        raise SpecNotFound(name)
    return spec


def _apply(spec: BackupSpec, values: SpecValues, now: datetime) -> None:
    """Store the user's fields, with the first fire after `now` under them."""
    spec.name = values.name
    spec.enabled = values.enabled
    spec.from_date = values.from_date
    spec.to_date = values.to_date
    spec.cron_string = values.cron_string
    spec.cron_derived = values.cron_derived
    spec.timezone = values.timezone
    spec.worker_config = values.worker_config
    spec.timeout_seconds = values.timeout_seconds
    spec.misfire_grace_seconds = values.misfire_grace_seconds
    spec.overlap_policy = values.overlap_policy.value
    spec.paused_reason = values.paused_reason
    spec.auto_pause_after_failures = values.auto_pause_after_failures
    spec.removal_delay_seconds = values.removal_delay_seconds
    spec.notify_url = values.notify_url
    spec.jitter_seconds = values.jitter_seconds
    spec.verify_cron_string = values.verify_cron_string
    spec.verify_sample_rate = values.verify_sample_rate
    for api_field, column in _RETENTION_COLUMNS.items():
        setattr(spec, column, values.retention[api_field])
    spec.retention_keep_within = values.keep_within
    spec.retention_last = values.keep_last
    spec.allow_keep_newest_only = values.allow_keep_newest_only
    spec.last_update = now
    spec.next_fire_at = compute_next_fire_at(
        name=values.name,
        jitter_seconds=values.jitter_seconds,
        cron_string=values.cron_string,
        timezone=values.timezone,
        enabled=values.enabled and not spec.deleting,
        from_date=values.from_date,
        to_date=values.to_date,
        now=now,
    )
    spec.next_verify_at = next_verify_after(
        name=values.name,
        cron_string=values.verify_cron_string,
        timezone=values.timezone,
        jitter_seconds=values.jitter_seconds,
        now=now,
    )


def retention_fields(spec: BackupSpec) -> dict[str, str]:
    """The stored retention policy as camelCase API fields."""
    return {api_field: getattr(spec, column) for api_field, column in _RETENTION_COLUMNS.items()}


def create_spec(session: Session, values: SpecValues, now: datetime) -> BackupSpec:
    """Insert a spec; raise SpecExists if the name is taken, even by a concurrent insert.

    The unique constraint decides, not the SELECT before it: under concurrency only the
    database knows. The session is rolled back on conflict.
    """
    if get_spec(session, values.name) is not None:
        raise SpecExists(values.name)
    spec = BackupSpec(created_at=now, deleting=False)
    _apply(spec, values, now)
    session.add(spec)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise SpecExists(values.name) from None
    return spec


def replace_spec(session: Session, spec: BackupSpec, values: SpecValues, now: datetime) -> None:
    """Full replacement of the user's fields; runtime state (running id, skips) is kept.

    A fire already due is never lost to a PUT (docs/scheduling.md, "Grace rules"): a PUT
    that leaves the schedule as it was keeps next_fire_at, due or not; before one that
    changes it, the caller settles the due fire under the old schedule
    (backtor.scheduling.fires.settle_due_fire), then the new schedule applies from `now`.
    """
    unchanged = not changes_schedule(spec, values)
    due = spec.next_fire_at
    verify_unchanged = not changes_verify_schedule(spec, values)
    verify_due = spec.next_verify_at
    resumed = values.enabled and not spec.enabled
    _apply(spec, values, now)
    if unchanged:
        spec.next_fire_at = due
    if verify_unchanged:  # a verifyCron fire due and not yet acted on stays due
        spec.next_verify_at = verify_due
    if resumed:  # enabled again: autoPauseAfterFailures counts afresh
        spec.consecutive_failures = 0
    session.flush()


def changes_schedule(spec: BackupSpec, values: SpecValues) -> bool:
    """Whether `values` would change what decides the spec's fire times."""
    return _schedule_of(spec) != _schedule_of_values(values, deleting=spec.deleting)


def changes_verify_schedule(spec: BackupSpec, values: SpecValues) -> bool:
    """Whether `values` would change the verifyCron fire times (cron, zone, jitter)."""
    stored = (spec.verify_cron_string, spec.timezone, spec.jitter_seconds)
    return stored != (values.verify_cron_string, values.timezone, values.jitter_seconds)


def _schedule_of(spec: BackupSpec) -> tuple[Any, ...]:
    """What decides a spec's fire times, as stored."""
    return (
        spec.cron_string,
        spec.timezone,
        spec.from_date,
        spec.to_date,
        spec.misfire_grace_seconds,
        spec.jitter_seconds,
        spec.enabled and not spec.deleting,
    )


def _schedule_of_values(values: SpecValues, *, deleting: bool) -> tuple[Any, ...]:
    return (
        values.cron_string,
        values.timezone,
        values.from_date,
        values.to_date,
        values.misfire_grace_seconds,
        values.jitter_seconds,
        values.enabled and not deleting,
    )


def delete_spec(session: Session, spec_id: int) -> None:
    """Delete a spec and, through ON DELETE CASCADE, its backup rows."""
    session.execute(delete(BackupSpec).where(BackupSpec.id == spec_id))


def count_unremoved_backups(session: Session, spec_id: int) -> int:
    """Backups whose data may still exist (RUNNING, COMPLETED, EXPIRING, REMOVING,
    REMOVE_FAILED) or whose remove_backup run is still to be seen ending, and create_backup
    runs starting or under way, whose data will exist once recorded."""
    stored = (
        select(func.count())
        .select_from(Backup)
        .where(
            Backup.spec_id == spec_id,
            or_(
                Backup.status.in_(sorted(UNREMOVED_STATUSES)),
                Backup.removed_by_open_run.is_not(None),
            ),
        )
    )
    in_flight = (
        select(func.count())
        .select_from(Fire)
        .where(
            Fire.spec_id == spec_id,
            or_(
                Fire.status == FireStatus.PENDING.value,  # a start may be under way
                and_(Fire.status == FireStatus.STARTED.value, Fire.outcome.is_(None)),
            ),
        )
    )
    return int(session.scalar(stored) or 0) + int(session.scalar(in_flight) or 0)


def list_backups(
    session: Session,
    spec_id: int,
    *,
    statuses: Collection[BackupStatus] = (),
    tag: str | None = None,
    after: int | None = None,
    limit: int | None = None,
) -> list[Backup]:
    """A spec's backups, newest first; `statuses` (any of) and `tag` narrow the list.

    Newest first is by scheduled time, then by id (the greater is the newer), as the
    retention plan orders them. `after` (the id of one of the spec's backups, matching the
    filters or not) starts the list after that backup; CursorNotFound when it is not the
    spec's. Rows are only deleted with their spec, so a cursor stays valid.
    """
    query = select(Backup).where(Backup.spec_id == spec_id)
    if after is not None:
        moment = session.scalar(
            select(Backup.scheduled_at).where(Backup.id == after, Backup.spec_id == spec_id)
        )
        if moment is None:
            raise CursorNotFound(f"after: {after} is not the id of one of the spec's backups")
        query = query.where(
            or_(
                Backup.scheduled_at < moment,
                and_(Backup.scheduled_at == moment, Backup.id < after),
            )
        )
    if statuses:
        query = query.where(Backup.status.in_(sorted(statuses)))
    if tag is not None:
        # tags is "daily,weekly": wrap both sides in commas so "daily" never matches a prefix.
        wrapped = literal(",") + Backup.tags + literal(",")
        query = query.where(wrapped.contains(f",{tag},", autoescape=True))
    query = query.order_by(Backup.scheduled_at.desc(), Backup.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_backups_other_than(
    session: Session, spec_id: int, status: BackupStatus, *more: BackupStatus
) -> int:
    """How many of the spec's backups have none of these statuses (the plan's "ignore"
    count: pass the candidates' statuses)."""
    statuses = sorted(s.value for s in (status, *more))
    return int(
        session.scalar(
            select(func.count())
            .select_from(Backup)
            .where(Backup.spec_id == spec_id, Backup.status.not_in(statuses))
        )
        or 0
    )


def mark_purging(session: Session, spec: BackupSpec, now: datetime) -> None:
    """Disable the spec and flag it for deletion once its last backup is removed."""
    spec.enabled = False
    spec.deleting = True
    spec.next_fire_at = None
    spec.next_verify_at = None
    spec.last_update = now
    session.flush()


def mark_purge_removals(session: Session, spec_id: int, now: datetime, limit: int) -> int:
    """Put up to `limit` of a purged spec's COMPLETED and EXPIRING backups (oldest first)
    in the outbox.

    They become REMOVING without a workflow; the scheduler's pass starts their
    remove_backup (backtor.scheduling.removals), under its own per-pass limit, so a purge
    never calls Conductor and never holds a row lock across a call. An EXPIRING backup
    does not wait out its removal delay: the purge asks for every backup to go (its
    expires_at is cleared). RUNNING backups follow once recorded, REMOVING and
    REMOVE_FAILED ones are on the path already. The same cap and order as the scheduler's
    advance_purges. Returns how many were marked.
    """
    held = Backup.status.in_(_PURGED_STATUSES)
    ids = list(
        session.scalars(
            select(Backup.id)
            .where(Backup.spec_id == spec_id, held)
            .order_by(Backup.scheduled_at, Backup.id)
            .limit(limit)
        )
    )
    if not ids:
        return 0
    marked = session.scalars(
        update(Backup)
        .where(Backup.id.in_(ids), held)
        .values(status=BackupStatus.REMOVING.value, next_attempt_at=now, expires_at=None)
        .returning(Backup.id)
    )
    return len(list(marked))


# What a purge marks for removal: every backup that holds data and is not on the way yet.
_PURGED_STATUSES = (BackupStatus.COMPLETED.value, BackupStatus.EXPIRING.value)


def finish_purge_if_done(session: Session, spec_id: int) -> bool:
    """Delete a spec under purge once none of its backups may still hold data.

    For the worker that records removals: call it after marking a backup REMOVED, in the
    same transaction, then commit. True when the spec was deleted. The spec row is locked
    (PostgreSQL) so a backup recorded concurrently cannot be orphaned.
    """
    spec = session.scalars(
        select(BackupSpec).where(BackupSpec.id == spec_id).with_for_update()
    ).one_or_none()
    if spec is None or not spec.deleting:
        return False
    if count_unremoved_backups(session, spec_id) > 0:
        return False
    delete_spec(session, spec_id)
    session.expunge(spec)
    return True


# -- the API's read paths: rows, not entities ---------------------------------------------
# What the read routes show is built from plain rows (the columns under the models'
# attribute names), read by statements built once, every value bound: a GET spends its
# time neither building SQL nor setting up ORM entities it will never change. Same
# filters, order and errors as the functions above; the spec routes that write still load
# entities.

_SPEC = BackupSpec.__table__
_BACKUP = Backup.__table__
_SPEC_BY_NAME = select(_SPEC).where(_SPEC.c.name == bindparam("name"))
_SPEC_ID_BY_NAME = select(_SPEC.c.id).where(_SPEC.c.name == bindparam("name"))
_CURSOR_MOMENT = select(_BACKUP.c.scheduled_at).where(
    _BACKUP.c.id == bindparam("after"), _BACKUP.c.spec_id == bindparam("spec_id")
)
_NEWEST_FIRST = (_BACKUP.c.scheduled_at.desc(), _BACKUP.c.id.desc())


def _page_statements(*columns: Any) -> tuple[Select[Any], Select[Any]]:
    """A spec's backups, newest first, `limit` of them: the first page, and the page after
    a cursor (its id and scheduled time), as list_backups pages."""
    first = (
        select(*columns)
        .where(_BACKUP.c.spec_id == bindparam("spec_id"))
        .order_by(*_NEWEST_FIRST)
        .limit(bindparam("limit"))
    )
    after = (
        select(*columns)
        .where(
            _BACKUP.c.spec_id == bindparam("spec_id"),
            or_(
                _BACKUP.c.scheduled_at < bindparam("moment"),
                and_(
                    _BACKUP.c.scheduled_at == bindparam("moment"),
                    _BACKUP.c.id < bindparam("after"),
                ),
            ),
        )
        .order_by(*_NEWEST_FIRST)
        .limit(bindparam("limit"))
    )
    return first, after


_BACKUP_PAGES = _page_statements(_BACKUP)
# What a retention plan's page shows of each backup (backtor.api.retention_routes).
_PLAN_PAGES = _page_statements(
    _BACKUP.c.id,
    _BACKUP.c.data_id,
    _BACKUP.c.status,
    _BACKUP.c.scheduled_at,
    _BACKUP.c.pinned,
    _BACKUP.c.expires_at,
)
# A spec's newest backups found by the spec's name: one statement for the common page.
_BACKUP_PAGE_BY_NAME = (
    select(_BACKUP)
    .where(_BACKUP.c.spec_id == _SPEC_ID_BY_NAME.scalar_subquery())
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
)
# list_spec_rows' statements: by dialect (the collation), `enabled` and `after` given or not.
_SPEC_PAGES: dict[tuple[str, bool, bool], Select[Any]] = {}
# Where the read paths run: a plain connection (backtor.db.engine.Reads) or a session.
Reader = Connection | Session


def _dialect_name(reader: Reader) -> str:
    bind = reader if isinstance(reader, Connection) else reader.get_bind()
    return str(bind.dialect.name)


def spec_row(reader: Reader, name: str) -> Row[Any]:
    """The spec named `name` as a row (get_spec's columns), or SpecNotFound."""
    row = reader.execute(_SPEC_BY_NAME, {"name": name}).one_or_none()
    if row is None:
        raise SpecNotFound(name)
    return row


def spec_id(reader: Reader, name: str) -> int:
    """The id of the spec named `name`, or SpecNotFound."""
    found = reader.execute(_SPEC_ID_BY_NAME, {"name": name}).scalar_one_or_none()
    if found is None:
        raise SpecNotFound(name)
    return int(found)


def _spec_page(dialect: str, enabled: bool, after: bool) -> Select[Any]:
    key = (dialect, enabled, after)
    statement = _SPEC_PAGES.get(key)
    if statement is None:
        name = _SPEC.c.name.collate("C") if dialect == "postgresql" else _SPEC.c.name
        statement = select(_SPEC).order_by(name).limit(bindparam("limit"))
        if enabled:
            statement = statement.where(_SPEC.c.enabled == bindparam("enabled"))
        if after:
            statement = statement.where(name > bindparam("after"))
        _SPEC_PAGES[key] = statement
    return statement


def list_spec_rows(
    reader: Reader, *, enabled: bool | None = None, after: str | None = None, limit: int
) -> list[Row[Any]]:
    """list_specs as rows: ordered by name by code point, `after` and `limit` in SQL."""
    dialect = _dialect_name(reader)
    statement = _spec_page(dialect, enabled is not None, after is not None)
    params: dict[str, Any] = {"limit": limit}
    if enabled is not None:
        params["enabled"] = enabled
    if after is not None:
        params["after"] = after
    return list(reader.execute(statement, params))


def list_backup_rows(
    reader: Reader,
    spec_id: int,
    *,
    statuses: Collection[BackupStatus] = (),
    tag: str | None = None,
    after: int | None = None,
    limit: int,
) -> list[Row[Any]]:
    """list_backups as rows: the same filters, order, cursor and CursorNotFound.

    The plain pages (no status or tag filter) run prebuilt statements; a filtered one is
    built as list_backups builds it.
    """
    moment = _cursor_moment(reader, spec_id, after)
    if statuses or tag is not None:
        query = _filtered_backups(spec_id, statuses, tag, after, moment).limit(limit)
        return list(reader.execute(query))
    return _paged(reader, _BACKUP_PAGES, spec_id, after, moment, limit)


def plan_page_rows(
    reader: Reader, spec_id: int, *, after: int | None, limit: int
) -> list[Row[Any]]:
    """list_backup_rows without filters, only the columns a retention plan's page shows:
    id, data_id, status, scheduled_at, pinned, expires_at."""
    moment = _cursor_moment(reader, spec_id, after)
    return _paged(reader, _PLAN_PAGES, spec_id, after, moment, limit)


def _cursor_moment(reader: Reader, spec_id: int, after: int | None) -> datetime | None:
    """The scheduled time of the cursor's backup (None without a cursor); CursorNotFound
    when `after` is not one of the spec's backups."""
    if after is None:
        return None
    params = {"after": after, "spec_id": spec_id}
    moment: datetime | None = reader.execute(_CURSOR_MOMENT, params).scalar_one_or_none()
    if moment is None:
        raise CursorNotFound(f"after: {after} is not the id of one of the spec's backups")
    return moment


def _paged(
    reader: Reader,
    statements: tuple[Select[Any], Select[Any]],
    spec_id: int,
    after: int | None,
    moment: datetime | None,
    limit: int,
) -> list[Row[Any]]:
    first, following = statements
    if after is None:
        return list(reader.execute(first, {"spec_id": spec_id, "limit": limit}))
    params = {"spec_id": spec_id, "moment": moment, "after": after, "limit": limit}
    return list(reader.execute(following, params))


def list_backup_rows_by_name(
    reader: Reader,
    name: str,
    *,
    statuses: Collection[BackupStatus] = (),
    tag: str | None = None,
    after: int | None = None,
    limit: int,
) -> list[Row[Any]]:
    """list_backup_rows of the spec named `name` (SpecNotFound first, as spec_id says it).

    The first page of all statuses, what most requests ask for, takes one statement: the
    spec is looked up on its own only when that page comes back empty.
    """
    if statuses or tag is not None or after is not None:
        return list_backup_rows(
            reader,
            spec_id(reader, name),
            statuses=statuses,
            tag=tag,
            after=after,
            limit=limit,
        )
    rows = list(reader.execute(_BACKUP_PAGE_BY_NAME, {"name": name, "limit": limit}))
    if not rows:
        spec_id(reader, name)  # SpecNotFound, or a spec without backups
    return rows


def _filtered_backups(
    spec_id: int,
    statuses: Collection[BackupStatus],
    tag: str | None,
    after: int | None,
    moment: datetime | None,
) -> Select[Any]:
    query = select(_BACKUP).where(_BACKUP.c.spec_id == spec_id)
    if after is not None:
        query = query.where(
            or_(
                _BACKUP.c.scheduled_at < moment,
                and_(_BACKUP.c.scheduled_at == moment, _BACKUP.c.id < after),
            )
        )
    if statuses:
        query = query.where(_BACKUP.c.status.in_(sorted(statuses)))
    if tag is not None:
        # tags is "daily,weekly": wrap both sides in commas so "daily" never matches a prefix.
        wrapped = literal(",") + _BACKUP.c.tags + literal(",")
        query = query.where(wrapped.contains(f",{tag},", autoescape=True))
    return query.order_by(*_NEWEST_FIRST)


_CANDIDATES: dict[tuple[str, ...], Select[Any]] = {}


def candidate_records(
    reader: Reader, spec_id: int, statuses: tuple[str, ...]
) -> list[BackupRecord]:
    """backtor.scheduling.recording.completed_records (`statuses`: its CANDIDATE_STATUSES),
    by a statement built once: the same rows, the same records (each as COMPLETED to the
    plan), for the retention routes that read a plan on every request."""
    key = tuple(sorted(statuses))
    statement = _CANDIDATES.get(key)
    if statement is None:
        columns: tuple[Any, ...] = (_BACKUP.c.id, _BACKUP.c.scheduled_at, _BACKUP.c.pinned)
        statement = select(*columns).where(
            _BACKUP.c.spec_id == bindparam("spec_id"), _BACKUP.c.status.in_(key)
        )
        _CANDIDATES[key] = statement
    return [_candidate(row) for row in reader.execute(statement, {"spec_id": spec_id})]


def _candidate(row: Row[Any]) -> BackupRecord:
    """A candidate's record, as completed_records makes it: COMPLETED to the plan."""
    return BackupRecord(str(row.id), row.scheduled_at, COMPLETED, row.pinned)


_OTHERS: dict[tuple[str, ...], Select[Any]] = {}


def _count_others(reader: Reader, spec_id: int, statuses: tuple[str, ...]) -> int:
    """count_backups_other_than, by a statement built once per set of statuses."""
    key = tuple(sorted(statuses))
    statement = _OTHERS.get(key)
    if statement is None:
        statement = (
            select(func.count())
            .select_from(_BACKUP)
            .where(_BACKUP.c.spec_id == bindparam("spec_id"), _BACKUP.c.status.not_in(key))
        )
        _OTHERS[key] = statement
    return int(reader.execute(statement, {"spec_id": spec_id}).scalar() or 0)


@dataclass(frozen=True)
class PlanInputs:
    """What one page of a spec's retention plan is made of."""

    page: list[Row[Any]]  # plan_page_rows
    candidates: list[BackupRecord]  # the plan's input: candidate_records
    others: int  # backups of another status: count_backups_other_than


def plan_inputs(
    reader: Reader, spec_id: int, statuses: tuple[str, ...], *, after: int | None, fetch: int
) -> PlanInputs:
    """A plan's page (`fetch` rows at most, as plan_page_rows), its candidates (`statuses`:
    CANDIDATE_STATUSES) and how many backups the plan ignores.

    A first page that came back with fewer than `fetch` rows holds every backup of the
    spec, as most specs' first page does: the candidates and the count are taken from it,
    one statement instead of three (and one read of the table on every backend).
    """
    page = plan_page_rows(reader, spec_id, after=after, limit=fetch)
    if after is None and len(page) < fetch:
        candidates = [_candidate(row) for row in page if row.status in statuses]
        return PlanInputs(page, candidates, len(page) - len(candidates))
    return PlanInputs(
        page,
        candidate_records(reader, spec_id, statuses),
        _count_others(reader, spec_id, statuses),
    )
