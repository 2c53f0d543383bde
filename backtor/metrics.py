"""Prometheus metrics that hold across replicas: derived from the database at scrape time.

Every API replica answers `/metrics` with the same shared figures, whichever process did
the work: counters are rows that the scheduling code increments in the transaction of the
event (backtor.db.counters), gauges are a few grouped queries over the current state. Only
`backtor_conductor_invocation`, `backtor_api_invocations_total` and `backtor_sql_total`
are process-local (their HELP text says so). The text is written here rather than through
prometheus_client's registry: with 10,000 specs that is ten times faster.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from backtor import telemetry
from backtor.cron import CronError, CronSchedule, latest_fire_at_or_before, next_fire
from backtor.db import counters
from backtor.db.models import (
    SCHEDULER_STATE_ID,
    Backup,
    BackupSpec,
    BackupStatus,
    SchedulerState,
)
from backtor.db.types import UTCDateTime, utc_now

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# -- process-local instruments --------------------------------------------------------------

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: noise

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
API_INVOCATIONS = Counter(
    "backtor_api_invocations",
    "Requests served by this API process (process-local), by route resource and HTTP status",
    ["entity", "status"],
    registry=PROCESS_REGISTRY,
)
SQL_STATEMENTS = Counter(
    "backtor_sql",
    "SQL statements run by this process (process-local), by outcome: ok or error",
    ["status"],
    registry=PROCESS_REGISTRY,
)
PROCESS_REGISTRY.register(telemetry.CONDUCTOR_INVOCATION)


def instrument_engine(engine: Engine) -> None:
    """Count `engine`'s statements in backtor_sql_total (once, however often called)."""
    if event.contains(engine, "after_cursor_execute", _statement_ran):
        return
    event.listen(engine, "after_cursor_execute", _statement_ran)
    event.listen(engine, "handle_error", _statement_failed)


def _statement_ran(*_args: Any) -> None:
    SQL_STATEMENTS.labels(status="ok").inc()


def _statement_failed(_context: Any) -> None:
    SQL_STATEMENTS.labels(status="error").inc()


# -- exposition -----------------------------------------------------------------------------


@dataclass
class Family:
    """One metric family: samples are (name suffix, label values, value)."""

    name: str
    kind: str  # gauge, counter or histogram
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[str, tuple[str, ...], float]] = field(default_factory=list)

    def add(self, value: float, *label_values: str, suffix: str = "") -> None:
        self.samples.append((suffix, label_values, value))


def render(families: Iterable[Family]) -> str:
    """Prometheus text format 0.0.4."""
    out: list[str] = []
    escaped: dict[str, str] = {}
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.kind}\n")
        for suffix, values, value in family.samples:
            if values:
                pairs = []
                for label, raw in zip(family.labels, values, strict=True):
                    text = escaped.get(raw)
                    if text is None:
                        text = escaped[raw] = _escape_label(raw)
                    pairs.append(f'{label}="{text}"')
                out.append(f"{family.name}{suffix}{{{','.join(pairs)}}} {_number(value)}\n")
            else:
                out.append(f"{family.name}{suffix} {_number(value)}\n")
    return "".join(out)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


# -- the expected period of a schedule -------------------------------------------------------

FINE_STEP = timedelta(hours=1)
FINE_SPAN = timedelta(days=8)
COARSE_STEP = timedelta(days=7)
COARSE_SPAN = timedelta(days=366)


def expected_period_seconds(schedule: CronSchedule, tz: ZoneInfo, around: datetime) -> float | None:
    """The longest wait between two consecutive fires from `around` on; None: no more fires.

    A backup is missing when none succeeded for longer than this (times a margin). The
    longest gap, not the usual one, so a weekday schedule does not page every weekend and
    a month-end one not every February. Gaps are looked at exactly over the next 8 days
    (every gap longer than an hour is seen) and over a year for gaps longer than a week.
    """
    previous = latest_fire_at_or_before(schedule, around, tz)
    moment = around
    fine_until = around + FINE_SPAN
    until = around + COARSE_SPAN
    longest = 0.0
    while moment < until:
        try:
            following = next_fire(schedule, moment, tz)
        except CronError:
            break
        if previous is not None:
            longest = max(longest, (following - previous).total_seconds())
        step = FINE_STEP if moment < fine_until else COARSE_STEP
        if following - moment >= step:
            moment = previous = following  # walk the gap's far end: the next gap is exact too
        else:
            moment += step
            previous = latest_fire_at_or_before(schedule, moment, tz)
    return longest or None


class PeriodCache:
    """Expected periods per (cron, zone), computed once in a while; a scrape gets a budget.

    A few milliseconds per distinct schedule: with thousands of distinct schedules the first
    scrapes fill the cache over several rounds (a spec without its period yet is left out of
    backtor_backup_expected_period_seconds until then) instead of timing out.
    """

    def __init__(self, ttl_seconds: float = 6 * 3600, max_entries: int = 50_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[float | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, cron: str, zone: str, now: datetime, deadline: float) -> float | None:
        key = (cron, zone)
        entry = self._entries.get(key)
        clock = time.monotonic()
        if entry is not None and clock - entry[1] < self.ttl:
            return entry[0]
        if clock > deadline:
            return entry[0] if entry is not None else None
        try:
            period = expected_period_seconds(CronSchedule(cron), ZoneInfo(zone), now)
        except (CronError, ValueError, KeyError) as exc:
            log.warning("no expected period for cron %r in %s: %s", cron, zone, exc)
            period = None
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (period, clock)
        return period


# -- the shared figures ----------------------------------------------------------------------

HELD_STATUSES = tuple(s.value for s in BackupStatus if s is not BackupStatus.REMOVED)
SUCCEEDED_STATUSES = (
    BackupStatus.COMPLETED.value,
    BackupStatus.REMOVING.value,
    BackupStatus.REMOVE_FAILED.value,
)

_COUNTER_HELP = {
    counters.TRIGGER: "Fires that tried to start a create_backup: success, or error (skipped "
    "because one still ran, or Conductor unavailable)",
    counters.WORKFLOW: "Finished create_backup workflows, by Conductor status; each also "
    "counts once under success or error",
    counters.SKIPPED: "Fire times that started no backup, by reason: running (the previous "
    "one still ran), misfire (passed over while the scheduler was late or down), "
    "conductor_unavailable (a manual trigger that could not start)",
    counters.WARN: "Backup warnings (a fire not started) and errors (Conductor refused or "
    "was unreachable, a create or remove workflow failed)",
    counters.TAG: "Retention tagging passes over a spec's backups",
    counters.RETENTION_TASKS: "Retention runs (plans applied to a spec's backups)",
    counters.RETENTION_DELETE: "Finished remove_backup workflows, by Conductor status",
}


@dataclass(frozen=True)
class _Spec:
    id: int
    name: str
    enabled: bool
    deleting: bool
    cron: str
    zone: str
    from_date: datetime | None
    to_date: datetime | None
    created_at: datetime
    last_update: datetime


class MetricsCollector:
    """Builds the `/metrics` answer: shared figures from the database, then this process's."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        conductor_up: Callable[[], bool] | None = None,
        clock: Callable[[], datetime] = utc_now,
        period_budget_seconds: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.conductor_up = conductor_up
        self.clock = clock
        self.period_budget = period_budget_seconds
        self.periods = PeriodCache()

    def exposition(self) -> str:
        families: list[Family] = []
        database_up = Family(
            "backtor_database_up",
            "gauge",
            "1 when this scrape could read the shared figures from the database",
        )
        try:
            families.extend(self.shared_families())
            database_up.add(1)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database cannot be read (%s)", type(exc).__name__)
            database_up.add(0)
        families.append(database_up)
        if self.conductor_up is not None:
            reachable = Family(
                "backtor_conductor_up",
                "gauge",
                "1 when this process reached Conductor's health endpoint (checked at most "
                "every few seconds)",
            )
            reachable.add(1 if self.conductor_up() else 0)
            families.append(reachable)
        local = generate_latest(PROCESS_REGISTRY).decode("utf-8")
        return render(families) + local

    def shared_families(self) -> list[Family]:
        now = self.clock()
        with self.sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                # One snapshot for all the queries below.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            specs = _specs(session)
            held = _held(session)
            last = _last_successes(session)
            counter_rows = counters.read_all(session)
            last_tick = session.scalar(
                select(SchedulerState.last_tick_at).where(SchedulerState.id == SCHEDULER_STATE_ID)
            )
            session.rollback()
        return [
            *self._spec_families(specs, held, last, now),
            *_counter_families(counter_rows),
            _tick_family(last_tick),
        ]

    def _spec_families(
        self,
        specs: Sequence[_Spec],
        held: dict[int, dict[str, int]],
        last: dict[int, tuple[datetime, datetime | None, datetime | None, float | None]],
        now: datetime,
    ) -> list[Family]:
        backups = Family(
            "backtor_backups",
            "gauge",
            "Backups each spec holds, by status (REMOVED ones are history, not counted)",
            ("backup", "status"),
        )
        last_success = Family(
            "backtor_backup_last_success_timestamp_seconds",
            "gauge",
            "When the spec's newest successful backup (still held) ended, Unix time",
            ("backup",),
        )
        last_size = Family(
            "backtor_backup_last_size_mbytes",
            "gauge",
            "Size of the spec's newest successful backup, in MB (dataSizeMB)",
            ("backup",),
        )
        last_time = Family(
            "backtor_backup_last_time_seconds",
            "gauge",
            "How long the spec's newest successful backup took, in seconds",
            ("backup",),
        )
        removal_failures = Family(
            "backtor_removal_failures",
            "gauge",
            "The spec's backups whose removal keeps failing (REMOVE_FAILED; still retried)",
            ("backup",),
        )
        expected = Family(
            "backtor_backup_expected_period_seconds",
            "gauge",
            "Longest wait between two fires of the spec's schedule (only for specs that "
            "should be backing up now: enabled, in their window, not being deleted)",
            ("backup",),
        )
        active_since = Family(
            "backtor_backup_active_since_timestamp_seconds",
            "gauge",
            "Since when the spec's current schedule applies (created, last updated or "
            "fromDate, the latest), Unix time; same specs as the expected period",
            ("backup",),
        )
        deadline = time.monotonic() + self.period_budget
        for spec in specs:
            name = spec.name
            statuses = held.get(spec.id)
            if statuses:
                for status, count in sorted(statuses.items()):
                    backups.add(count, name, status)
            removal_failures.add(
                statuses.get(BackupStatus.REMOVE_FAILED.value, 0) if statuses else 0, name
            )
            newest = last.get(spec.id)
            if newest is not None:
                at, started, ended, size = newest
                last_success.add(at.timestamp(), name)
                if size is not None:
                    last_size.add(size, name)
                if started is not None and ended is not None:
                    last_time.add(max((ended - started).total_seconds(), 0.0), name)
            if _active(spec, now):
                period = self.periods.get(spec.cron, spec.zone, now, deadline)
                if period is not None:
                    expected.add(period, name)
                    since = max(
                        spec.created_at, spec.last_update, spec.from_date or spec.created_at
                    )
                    active_since.add(since.timestamp(), name)
        return [
            backups,
            last_success,
            last_size,
            last_time,
            removal_failures,
            expected,
            active_since,
        ]


def _active(spec: _Spec, now: datetime) -> bool:
    return (
        spec.enabled
        and not spec.deleting
        and (spec.from_date is None or spec.from_date <= now)
        and (spec.to_date is None or spec.to_date > now)
    )


def _specs(session: Session) -> list[_Spec]:
    rows = session.execute(
        select(
            BackupSpec.id,
            BackupSpec.name,
            BackupSpec.enabled,
            BackupSpec.deleting,
            BackupSpec.cron_string,
            BackupSpec.timezone,
            BackupSpec.from_date,
            BackupSpec.to_date,
            BackupSpec.created_at,
            BackupSpec.last_update,
        ).order_by(BackupSpec.name)
    ).all()
    return [
        _Spec(
            id=row.id,
            name=row.name,
            enabled=row.enabled,
            deleting=row.deleting,
            cron=row.cron_string,
            zone=row.timezone,
            from_date=row.from_date,
            to_date=row.to_date,
            created_at=row.created_at,
            last_update=row.last_update,
        )
        for row in rows
    ]


def _held(session: Session) -> dict[int, dict[str, int]]:
    rows = session.execute(
        select(Backup.spec_id, Backup.status, func.count())
        .where(Backup.status.in_(HELD_STATUSES))
        .group_by(Backup.status, Backup.spec_id)
    ).all()
    held: defaultdict[int, dict[str, int]] = defaultdict(dict)
    for spec_id, status, count in rows:
        held[spec_id][status] = int(count)
    return held


def _last_successes(
    session: Session,
) -> dict[int, tuple[datetime, datetime | None, datetime | None, float | None]]:
    """Per spec, the newest successful backup still held: (when, start, end, size)."""
    at = func.coalesce(Backup.end_time, Backup.start_time, Backup.scheduled_at, type_=UTCDateTime)
    ranked = (
        select(
            Backup.spec_id,
            at.label("at"),
            Backup.start_time,
            Backup.end_time,
            Backup.size_mb,
            func.row_number()
            .over(partition_by=Backup.spec_id, order_by=(at.desc(), Backup.id.desc()))
            .label("rank"),
        )
        .where(Backup.status.in_(SUCCEEDED_STATUSES))
        .subquery()
    )
    rows = session.execute(
        select(
            ranked.c.spec_id,
            ranked.c.at,
            ranked.c.start_time,
            ranked.c.end_time,
            ranked.c.size_mb,
        ).where(ranked.c.rank == 1)
    ).all()
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


def _counter_families(rows: Sequence[tuple[str, str, str, float]]) -> list[Family]:
    by_name: defaultdict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for name, backup, label, value in rows:
        by_name[name].append((backup, label, value))
    families: list[Family] = []
    for name, label_name in counters.COUNTER_LABELS.items():
        series = sorted(by_name.get(name, []))
        # The text format names a counter family after its samples: `<name>_total`.
        if label_name is None:
            family = Family(f"{name}_total", "counter", _COUNTER_HELP[name])
            family.add(sum(value for _, _, value in series))
        else:
            family = Family(f"{name}_total", "counter", _COUNTER_HELP[name], ("backup", label_name))
            for backup, label, value in series:
                family.add(value, backup, label)
        families.append(family)
    families.append(_lag_family(by_name))
    return families


def _lag_family(by_name: dict[str, list[tuple[str, str, float]]]) -> Family:
    buckets = {label: value for _, label, value in by_name.get(counters.LAG_BUCKET, [])}
    total = sum(value for _, _, value in by_name.get(counters.LAG_SUM, []))
    count = sum(value for _, _, value in by_name.get(counters.LAG_COUNT, []))
    family = Family(
        counters.SCHEDULE_LAG,
        "histogram",
        "How late create_backup workflows started: start time minus scheduled fire time",
        ("le",),
    )
    for bound in counters.LAG_BUCKETS:
        label = counters.bucket_label(bound)
        family.add(buckets.get(label, 0.0), label, suffix="_bucket")
    family.add(buckets.get("+Inf", 0.0), "+Inf", suffix="_bucket")
    family.samples.append(("_sum", (), total))
    family.samples.append(("_count", (), count))
    return family


def _tick_family(last_tick: datetime | None) -> Family:
    family = Family(
        "backtor_tick_last_run_timestamp_seconds",
        "gauge",
        "The scheduler's heartbeat: when its tick last ran, Unix time",
    )
    if last_tick is not None:
        family.add(last_tick.timestamp())
    return family


# -- Conductor's reachability -----------------------------------------------------------------


class ConductorProbe:
    """Is Conductor's /health answering? Asked at most every `ttl` seconds, briefly."""

    def __init__(self, api_url: str, *, timeout: float = 2.0, ttl: float = 10.0) -> None:
        self.health_url = api_url.rstrip("/").removesuffix("/api") + "/health"
        self.timeout = timeout
        self.ttl = ttl
        self._checked: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._checked is not None and now - self._checked[0] < self.ttl:
                return self._checked[1]
            try:
                answer = requests.get(self.health_url, timeout=self.timeout)
                up = answer.ok and bool(answer.json().get("healthy", False))
            except (requests.RequestException, ValueError):
                up = False
            self._checked = (time.monotonic(), up)
            return up
