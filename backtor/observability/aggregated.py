"""`/metrics` without a series per spec (BACKTOR_METRICS_MODE=aggregated): the fleet's figures.

Why: the per-spec answer carries about 15.6 series per spec, so 1.55 million (117 MB) at
100,000 specs, on every API replica: more than one Prometheus target should bring, and
able to overrun the shipped scrape timeout (docs/performance.md has the figures). This mode
keeps what an operator pages on, summed or counted over the fleet: backups per status,
specs per state, how many specs are overdue or unverified by the per-spec alerts' own
rules (freshness.py), the oldest last success, the counters summed over specs; and the
figures that never had a spec label, unchanged. Its answer has the same 47 series whatever
the number of specs, and no query returns a row per spec: each is a COUNT, SUM or MIN,
grouped by a key with a handful of values, or by schedule (cron, zone, verify cron), whose
expected periods only Python computes.

Per-spec families map to fleet ones by name: the sum over specs of `backtor_X` is
`backtor_fleet_X`, with the same labels but `backup`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    FromClause,
    Select,
    String,
    and_,
    bindparam,
    case,
    column,
    exists,
    func,
    not_,
    or_,
    select,
    values,
)
from sqlalchemy.orm import Session

from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, MetricCounter
from backtor.db.types import UTCDateTime
from backtor.observability.collector import (
    _COUNTER_HELP,
    _GLOBAL_COUNTERS,
    _LAST_TICK,
    HELD_STATUSES,
    SUCCEEDED_STATUSES,
    MetricsCollector,
    Row,
    _epoch,
    _lag_family,
    _prepare,
    _rows,
    _tick_family,
)
from backtor.observability.exposition import Family, label_pairs
from backtor.observability.freshness import not_verified_limit_seconds, overdue_limit_seconds

# SQLite: schedules per pass over the specs, 5 bound values each (under the 999 of old
# SQLite builds). PostgreSQL takes them all in one pass.
SQLITE_SCHEDULES_PER_QUERY = 150
SPEC_STATES = ("enabled", "paused", "deleting")
# A schedule's cutoffs: (cron, zone, verify cron or '', overdue before, not verified before).
Limit = tuple[str, str, str, datetime, datetime]
# The cutoff of a figure a schedule lacks (no verifyCronString, or no verify period yet): no
# spec started before it, so none counts.
NO_CUTOFF = datetime(1970, 1, 1, tzinfo=UTC)


def fleet_name(family: str) -> str:
    """`backtor_backups` -> `backtor_fleet_backups`: the sum over specs of a per-spec family."""
    return "backtor_fleet_" + family.removeprefix("backtor_")


class AggregatedCollector(MetricsCollector):
    """The `/metrics` answer with fleet-level figures only (no `backup` label anywhere)."""

    mode = "aggregated"

    def shared_families(self) -> list[Family]:
        now = self.clock()
        # A second connection reads the counters and the failed verifications (a pass over
        # the held backups themselves) while this one counts the specs: at 100,000 specs
        # that hides a third of the time. They need no snapshot shared with the rest.
        counting = self._counting.submit(self._side_figures)
        with self.sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                # One snapshot for the queries below.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            _prepare(session)
            states = _rows(session, _SPEC_STATES)
            backups = _rows(session, _FLEET_BACKUPS)
            schedules = _rows(session, _active_schedules(now))
            oldest, overdue, not_verified = self._freshness(session, schedules, now)
            last_tick = session.scalar(_LAST_TICK)
            session.rollback()
        labelled, global_rows, verify_failures = counting.result()
        return [
            *_spec_families(states, overdue, not_verified, oldest),
            *_backup_families(backups, verify_failures),
            *_fleet_counter_families(labelled, global_rows),
            _tick_family(last_tick),
        ]

    def _side_figures(self) -> tuple[list[Row], list[Row], int]:
        with self.sessions() as session:
            _prepare(session)
            labelled, global_rows = (
                _rows(session, _FLEET_COUNTERS),
                _rows(session, _GLOBAL_COUNTERS),
            )
            verify_failures = int(session.scalar(_FLEET_VERIFY_FAILURES) or 0)
            session.rollback()
            return labelled, global_rows, verify_failures

    def _freshness(
        self, session: Session, schedules: Sequence[Row], now: datetime
    ) -> tuple[float | None, int, int]:
        """The oldest last success, and the specs past the BacktorBackupMissing and
        BacktorBackupNotVerified limits now.

        The limits rest on each schedule's expected period, computed here per distinct
        (cron, zone) as per-spec mode does (a spec whose period is not known yet counts in
        neither, as it has no expected period there); the database applies them to the
        specs in one pass (on SQLite, schedules beyond the first SQLITE_SCHEDULES_PER_QUERY
        are counted by further passes over their own specs).
        """
        deadline = time.monotonic() + self.period_budget
        periods: dict[tuple[str, str], float | None] = {}

        def period(cron: str, zone: str) -> float | None:
            if (cron, zone) not in periods:
                periods[cron, zone] = self.periods.get(cron, zone, now, deadline)
            return periods[cron, zone]

        limits: list[Limit] = []
        for cron, zone, verify_cron in schedules:
            every = period(cron, zone)
            if every is None:
                continue
            unproven = NO_CUTOFF
            if verify_cron is not None:
                verify_every = period(verify_cron, zone)
                if verify_every is not None:
                    window = not_verified_limit_seconds(every, verify_every)
                    unproven = now - timedelta(seconds=window)
            due = now - timedelta(seconds=overdue_limit_seconds(every))
            limits.append((cron, zone, verify_cron or "", due, unproven))
        if session.get_bind().dialect.name == "postgresql":
            # The cutoffs as five arrays: one statement whatever their number (cached
            # compiled, where a VALUES list would be compiled anew at every scrape).
            arrays = {name: [row[i] for row in limits] for i, name in enumerate(_LIMIT_ARRAYS)}
            query = _fleet_freshness(_LIMITS_POSTGRES, now)
            oldest, overdue, not_verified = session.execute(query, arrays).one()
            return oldest, int(overdue), int(not_verified)
        # SQLite: a VALUES list, in chunks that stay under its limit on bound values.
        first = _limits_sqlite(limits[:SQLITE_SCHEDULES_PER_QUERY])
        oldest, overdue, not_verified = session.execute(_fleet_freshness(first, now)).one()
        overdue, not_verified = int(overdue), int(not_verified)
        for start in range(SQLITE_SCHEDULES_PER_QUERY, len(limits), SQLITE_SCHEDULES_PER_QUERY):
            chunk = _limits_sqlite(limits[start : start + SQLITE_SCHEDULES_PER_QUERY])
            _, late, unproven = session.execute(_fleet_freshness(chunk, now, outer=False)).one()
            overdue, not_verified = overdue + int(late), not_verified + int(unproven)
        return oldest, overdue, not_verified


# -- the queries: each returns a bounded number of rows --------------------------------------

# Specs by (deleting, enabled): at most 4 rows.
_SPEC_STATES = select(BackupSpec.deleting, BackupSpec.enabled, func.count()).group_by(
    BackupSpec.deleting, BackupSpec.enabled
)
# Held backups by status: at most 7 rows, from the index on (status, spec_id) alone.
_FLEET_BACKUPS = (
    select(Backup.status, func.count())
    .where(Backup.status.in_(HELD_STATUSES))
    .group_by(Backup.status)
)
# Held backups whose latest verdict is FAILED (a count of its own: the verdict is in the
# table, not in an index, and reading it for every held backup costs more than both counts).
_FLEET_VERIFY_FAILURES = select(func.count()).where(
    Backup.status.in_(HELD_STATUSES), Backup.verify_status == "FAILED"
)
# The per-spec counter series summed over specs: one row per family and label value.
_FLEET_COUNTERS = (
    select(MetricCounter.name, MetricCounter.label, func.sum(MetricCounter.value))
    .where(MetricCounter.backup != "")
    .group_by(MetricCounter.name, MetricCounter.label)
)


def _active(now: datetime) -> ColumnElement[bool]:
    """Should the spec be backing up now: freshness.is_active, as SQL."""
    return and_(
        BackupSpec.enabled,
        not_(BackupSpec.deleting),
        or_(BackupSpec.from_date.is_(None), BackupSpec.from_date <= now),
        or_(BackupSpec.to_date.is_(None), BackupSpec.to_date > now),
    )


def _started_before(cutoff: Any) -> ColumnElement[bool]:
    """freshness.active_since (created, updated or fromDate, the latest) is before `cutoff`."""
    return and_(
        BackupSpec.created_at < cutoff,
        BackupSpec.last_update < cutoff,
        or_(BackupSpec.from_date.is_(None), BackupSpec.from_date < cutoff),
    )


def _active_schedules(now: datetime) -> Select[str, str, str | None]:
    """The distinct schedules of the specs that should be backing up now."""
    return (
        select(BackupSpec.cron_string, BackupSpec.timezone, BackupSpec.verify_cron_string)
        .where(_active(now))
        .group_by(BackupSpec.cron_string, BackupSpec.timezone, BackupSpec.verify_cron_string)
    )


# The cutoffs on PostgreSQL: five array parameters, unnested into rows.
_LIMIT_ARRAYS = ("crons", "zones", "verify_crons", "dues", "unprovens")
_LIMITS_POSTGRES = (
    func.unnest(
        *(
            bindparam(name, type_=ARRAY(DateTime(timezone=True) if i > 2 else String()))
            for i, name in enumerate(_LIMIT_ARRAYS)
        )
    )
    .table_valued("cron", "zone", "verify_cron", "due", "unproven")
    .render_derived(name="limits")
)


def _limits_sqlite(limits: Sequence[Limit]) -> FromClause:
    """The cutoffs on SQLite: a VALUES list (never empty: a row that matches no spec)."""
    table = values(
        column("cron", String),
        column("zone", String),
        column("verify_cron", String),
        column("due", UTCDateTime),
        column("unproven", UTCDateTime),
        name="limits",
    ).data(list(limits) or [("", "", "", NO_CUTOFF, NO_CUTOFF)])
    return table.cte("limits")


def _fleet_freshness(cutoffs: FromClause, now: datetime, *, outer: bool = True) -> Select[Any]:
    """One pass over the active specs: (oldest last success, overdue, not verified).

    Each spec's last success is the per-spec gauge's (its newest successful backup still
    held: one probe into the partial index ix_backup_newest_success). The alerts'
    `time() - max(last success, active since) > limit` is `max(...) < now - limit`: the
    spec's schedule applied before that cutoff, and nothing newer succeeded (or, for
    BacktorBackupNotVerified, was proven restorable) since. `cutoffs` has each schedule's
    (cron, zone, verify_cron, due, unproven); `outer` False counts only the specs of these
    schedules (the oldest is then not read).
    """
    newest = (
        select(func.max(Backup.end_time))
        .where(
            Backup.spec_id == BackupSpec.id,
            Backup.status.in_(SUCCEEDED_STATUSES),
            Backup.end_time.is_not(None),
        )
        .scalar_subquery()
    )
    verified_since = exists().where(
        Backup.spec_id == BackupSpec.id,
        Backup.status.in_(HELD_STATUSES),
        Backup.verify_status == "VERIFIED",
        Backup.end_time >= cutoffs.c.unproven,
    )
    not_verified = and_(_started_before(cutoffs.c.unproven), not_(verified_since))
    on = and_(
        BackupSpec.cron_string == cutoffs.c.cron,
        BackupSpec.timezone == cutoffs.c.zone,
        # '' for none: an equality, so the database can hash-join on it.
        func.coalesce(BackupSpec.verify_cron_string, "") == cutoffs.c.verify_cron,
    )
    per_spec = (
        select(
            newest.label("newest"),
            cutoffs.c.due,
            case((_started_before(cutoffs.c.due), 1), else_=0).label("started"),
            case((not_verified, 1), else_=0).label("not_verified"),
        )
        .select_from(BackupSpec)
        .join(cutoffs, on, isouter=outer)
        .where(_active(now))
        # PostgreSQL would otherwise run the newest-success probe once per use below.
        .cte("per_spec")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    late = and_(
        per_spec.c.started == 1,
        or_(per_spec.c.newest.is_(None), per_spec.c.newest < per_spec.c.due),
    )
    return select(
        _epoch(func.min(per_spec.c.newest)),
        func.coalesce(func.sum(case((late, 1), else_=0)), 0),
        func.coalesce(func.sum(per_spec.c.not_verified), 0),
    )


# -- the families ---------------------------------------------------------------------------


def _spec_families(
    states: Sequence[Row], overdue: int, not_verified: int, oldest: float | None
) -> list[Family]:
    by_state = dict.fromkeys(SPEC_STATES, 0)
    for deleting, enabled, count in states:
        state = "deleting" if deleting else "enabled" if enabled else "paused"
        by_state[state] += int(count)
    specs = Family(
        "backtor_specs",
        "gauge",
        "Specs by state: enabled, paused (disabled, by hand or by autoPauseAfterFailures) "
        "or deleting (being purged)",
    )
    for state in SPEC_STATES:
        specs.add(by_state[state], label_pairs(state=state))
    paused = Family(
        "backtor_backup_specs_paused",
        "gauge",
        "Specs paused: disabled (enabled 0, by hand or by autoPauseAfterFailures) and not "
        "being deleted; their pausedReason says why",
    )
    paused.add(by_state["paused"])
    late = Family(
        "backtor_specs_overdue",
        "gauge",
        "Specs that should be backing up now with no successful backup for more than 1.5 "
        "times their schedule's longest wait (at least 5 minutes): BacktorBackupMissing's "
        "rule, applied at scrape time",
    )
    late.add(overdue)
    unproven = Family(
        "backtor_specs_not_verified",
        "gauge",
        "Specs with a verifyCronString whose newest backup proven restorable is older than "
        "2 periods (or none is): BacktorBackupNotVerified's rule, applied at scrape time",
    )
    unproven.add(not_verified)
    oldest_success = Family(
        "backtor_oldest_last_success_timestamp_seconds",
        "gauge",
        "The oldest last success among specs that should be backing up now (each one's "
        "newest successful backup still held), Unix time; absent when none has one",
    )
    if oldest is not None:
        oldest_success.add(oldest)
    return [specs, paused, late, unproven, oldest_success]


def _backup_families(rows: Sequence[Row], verify_failures: int) -> list[Family]:
    by_status: defaultdict[str, int] = defaultdict(int)
    for status, count in rows:
        by_status[status] += int(count)
    backups = Family(
        fleet_name("backtor_backups"),
        "gauge",
        "Backups held over every spec, by status (REMOVED ones are history, not counted)",
    )
    for status in HELD_STATUSES:
        backups.add(by_status[status], label_pairs(status=status))
    removal = Family(
        fleet_name("backtor_removal_failures"),
        "gauge",
        "Backups over every spec whose removal keeps failing (REMOVE_FAILED; still retried)",
    )
    removal.add(by_status["REMOVE_FAILED"])
    verify = Family(
        fleet_name("backtor_backup_verify_failures"),
        "gauge",
        "Backups held over every spec whose latest verification FAILED",
    )
    verify.add(verify_failures)
    return [backups, removal, verify]


def _fleet_counter_families(labelled: Sequence[Row], global_rows: Sequence[Row]) -> list[Family]:
    """The per-spec counters summed over specs, then the counters that have no spec."""
    families: list[Family] = []
    sums: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)
    for name, label, amount in labelled:
        sums[name].append((label, float(amount)))
    for name, label_name in counters.COUNTER_LABELS.items():
        if label_name is None:
            continue
        family = Family(
            fleet_name(name) + "_total",
            "counter",
            f"Summed over specs: {_COUNTER_HELP[name]}. A deleted spec's counts leave the sum",
        )
        for label, amount in sorted(sums.get(name, ())):
            family.add(amount, label_pairs(**{label_name: label}))
        families.append(family)
    unlabelled: defaultdict[str, float] = defaultdict(float)
    lag: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for name, label, amount in global_rows:
        if name in counters.COUNTER_LABELS:
            unlabelled[name] += amount
        else:
            lag[name][label] = amount
    for name, label_name in counters.COUNTER_LABELS.items():
        if label_name is None:
            family = Family(f"{name}_total", "counter", _COUNTER_HELP[name])
            family.add(unlabelled[name])
            families.append(family)
    families.append(_lag_family(lag))
    return families
