"""The shared figures of `/metrics`, derived from the database at scrape time.

Every API replica answers `/metrics` with the same figures, whichever process did the work:
counters are rows that the scheduling code increments in the transaction of the event
(backtor.db.counters), gauges are a few grouped queries over the current state. This
process's own instruments (telemetry.py) are appended at the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Executable,
    Float,
    String,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from backtor.core.gcpause import collector_paused
from backtor.db import counters
from backtor.db.models import (
    SCHEDULER_STATE_ID,
    Backup,
    BackupSpec,
    BackupStatus,
    MetricCounter,
    SchedulerState,
)
from backtor.db.types import utc_now
from backtor.observability.exposition import (
    Family,
    escape_label,
    label_pairs,
    render,
    sample_value,
)
from backtor.observability.periods import PeriodCache
from backtor.observability.telemetry import process_exposition

log = logging.getLogger(__name__)

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
    counters.NOTIFY_DELIVERED: "Notices a receiver accepted (2xx) through backtor_notify",
    counters.NOTIFY_FAILURES: "Notices whose backtor_notify failed after every retry (not "
    "delivered; retry it in Conductor's UI)",
    counters.VERIFY: "Verdicts of verify_backup runs, by result: VERIFIED, or FAILED (the "
    "worker found the backup damaged or missing, or the run failed); runs terminated or "
    "timed out give no verdict",
    counters.RESTORE: "Ended restore_backup runs, by Conductor status (COMPLETED, FAILED, "
    "TERMINATED, TIMED_OUT; a start Conductor refused counts as FAILED)",
}


Row = tuple[Any, ...]


def _epoch(column: Any) -> Any:
    """A timestamp column as Unix seconds, computed by the database (SQLite: whole seconds)."""
    return cast(func.extract("epoch", column), Float)


def _prepare(session: Session) -> bool:
    """PostgreSQL: no JIT, which costs more than it saves on queries this short. True on it."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    session.execute(text("SET LOCAL jit = off"))
    return True


def _rows(session: Session, statement: Executable) -> list[Row]:
    """Plain DB-API tuples: the figures need no ORM objects, and skipping them halves the time."""
    result: Any = session.connection().execute(statement)
    return list(result.cursor.fetchall())


class MetricsCollector:
    """Builds the `/metrics` answer: shared figures from the database, then this process's.

    This one renders a series set per spec (BACKTOR_METRICS_MODE=per-spec, the default);
    backtor.observability.aggregated renders the fleet-level figures instead.
    """

    mode = "per-spec"

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
        self._counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtor-metrics")

    def exposition(self) -> str:
        families: list[Family] = [self._mode_family()]
        database_up = Family(
            "backtor_database_up",
            "gauge",
            "1 when this scrape could read the shared figures from the database",
        )
        try:
            with collector_paused():
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
        local = process_exposition()
        return render(families) + local

    def _mode_family(self) -> Family:
        """Which mode answers, so a rule file loaded for the other one can say so."""
        info = Family(
            "backtor_metrics_info",
            "gauge",
            "Always 1; mode is this process's BACKTOR_METRICS_MODE (per-spec or aggregated)",
        )
        info.add(1, label_pairs(mode=self.mode))
        return info

    def shared_families(self) -> list[Family]:
        now = self.clock()
        # The counters' lines are written by the database while this thread reads the specs
        # and formats their gauges: a third less time at 10,000 specs. (They need not share
        # a snapshot with the gauges: they are separate series.)
        counting = self._counting.submit(self._counter_rows)
        with self.sessions() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            if postgres:
                # One snapshot for the queries below.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            _prepare(session)
            specs = _rows(session, _SPECS)
            held = _rows(session, _HELD)
            newest = _rows(session, _NEWEST_POSTGRES if postgres else _NEWEST_ANY)
            verified = _rows(session, _VERIFIED)
            last_tick = session.scalar(_LAST_TICK)
            session.rollback()
        spec_families = self._spec_families(specs, held, newest, now)
        spec_families.extend(_verify_families(specs, verified))
        counter_lines, global_counters = counting.result()
        return [
            *spec_families,
            *_counter_families(counter_lines, global_counters),
            _tick_family(last_tick),
        ]

    def _counter_rows(self) -> tuple[list[Row], list[Row]]:
        with self.sessions() as session:
            _prepare(session)
            rows = _rows(session, _COUNTER_LINES), _rows(session, _GLOBAL_COUNTERS)
            session.rollback()
            return rows

    def _spec_families(
        self, specs: Sequence[Row], held: Sequence[Row], newest: Sequence[Row], now: datetime
    ) -> list[Family]:
        backups = Family(
            "backtor_backups",
            "gauge",
            "Backups each spec holds, by status (REMOVED ones are history, not counted)",
        )
        last_success = Family(
            "backtor_backup_last_success_timestamp_seconds",
            "gauge",
            "When the spec's newest successful backup (still held) ended, Unix time",
        )
        last_size = Family(
            "backtor_backup_last_size_mbytes",
            "gauge",
            "Size of the spec's newest successful backup, in MB (dataSizeMB)",
        )
        last_time = Family(
            "backtor_backup_last_time_seconds",
            "gauge",
            "How long the spec's newest successful backup took, in seconds",
        )
        removal_failures = Family(
            "backtor_removal_failures",
            "gauge",
            "The spec's backups whose removal keeps failing (REMOVE_FAILED; still retried)",
        )
        expected = Family(
            "backtor_backup_expected_period_seconds",
            "gauge",
            "Longest wait between two fires of the spec's schedule (only for specs that "
            "should be backing up now: enabled, in their window, not being deleted)",
        )
        active_since = Family(
            "backtor_backup_active_since_timestamp_seconds",
            "gauge",
            "Since when the spec's current schedule applies (created, last updated or "
            "fromDate, the latest), Unix time; same specs as the expected period",
        )
        verify_expected = Family(
            "backtor_backup_verify_expected_period_seconds",
            "gauge",
            "Longest wait between two fires of the spec's verifyCronString (same specs as "
            "the expected period, when they verify on a schedule)",
        )
        paused = Family(
            "backtor_backup_specs_paused",
            "gauge",
            "Specs paused: disabled (enabled 0, by hand or by autoPauseAfterFailures) and not "
            "being deleted; their pausedReason says why",
        )
        paused_count = 0
        held_by_spec: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
        for spec_id, status, count in held:
            held_by_spec[spec_id].append((status, int(count)))
        newest_by_spec = {row[0]: row[1:] for row in newest}
        now_ts = now.timestamp()
        deadline = time.monotonic() + self.period_budget
        periods: dict[tuple[str, str], float | None] = {}  # this scrape's, per schedule
        failed = BackupStatus.REMOVE_FAILED.value
        # The loop runs once per spec: lines are appended directly (Family.add per sample
        # would double its time at 10,000 specs). Database numbers are finite floats.
        add_backups = backups.lines.append
        add_failures = removal_failures.lines.append
        add_success = last_success.lines.append
        add_size = last_size.lines.append
        add_time = last_time.lines.append
        for (
            spec_id,
            name,
            enabled,
            deleting,
            cron,
            zone,
            start,
            end,
            created,
            updated,
            verify_cron,
        ) in specs:
            tag = f'{{backup="{escape_label(name)}"'
            if not enabled and not deleting:
                paused_count += 1
            failing = 0
            for status, count in held_by_spec.get(spec_id, ()):
                add_backups(f'backtor_backups{tag},status="{status}"}} {count}.0\n')
                if status == failed:
                    failing = count
            add_failures(f"backtor_removal_failures{tag}}} {failing}.0\n")
            found = newest_by_spec.get(spec_id)
            if found is not None:
                ended, started, size = found
                add_success(f"backtor_backup_last_success_timestamp_seconds{tag}}} {ended!r}\n")
                if size is not None:
                    add_size(f"backtor_backup_last_size_mbytes{tag}}} {sample_value(size)}\n")
                if started is not None:
                    took = max(ended - started, 0.0)
                    add_time(f"backtor_backup_last_time_seconds{tag}}} {took!r}\n")
            active = (
                enabled
                and not deleting
                and (start is None or start <= now_ts)
                and (end is None or end > now_ts)
            )
            if active:
                key = (cron, zone)
                if key in periods:
                    period = periods[key]
                else:
                    period = periods[key] = self.periods.get(cron, zone, now, deadline)
                if period is not None:
                    labels = tag[1:]
                    expected.add(period, labels)
                    active_since.add(max(created, updated, start or created), labels)
                if verify_cron is not None:
                    key = (verify_cron, zone)
                    if key in periods:
                        every = periods[key]
                    else:
                        every = periods[key] = self.periods.get(verify_cron, zone, now, deadline)
                    if every is not None:
                        verify_expected.add(every, tag[1:])
        paused.add(paused_count)
        return [
            backups,
            last_success,
            last_size,
            last_time,
            removal_failures,
            expected,
            active_since,
            verify_expected,
            paused,
        ]


_SPECS = select(
    BackupSpec.id,
    BackupSpec.name,
    BackupSpec.enabled,
    BackupSpec.deleting,
    BackupSpec.cron_string,
    BackupSpec.timezone,
    _epoch(BackupSpec.from_date),
    _epoch(BackupSpec.to_date),
    _epoch(BackupSpec.created_at),
    _epoch(BackupSpec.last_update),
    BackupSpec.verify_cron_string,
)
_HELD = (
    select(Backup.spec_id, Backup.status, func.count())
    .where(Backup.status.in_(HELD_STATUSES))
    .group_by(Backup.status, Backup.spec_id)
)


# Per spec, the newest successful backup still held: (spec_id, ended, started, size). One
# probe per spec into the partial index ix_backup_newest_success: the cost follows the
# number of specs, not of backups. PostgreSQL runs it as a LATERAL join; SQLite (which has
# no LATERAL) as correlated subqueries.
def _newest_success(*columns: Any) -> Any:
    return (
        select(*columns)
        .where(
            Backup.spec_id == BackupSpec.id,
            Backup.status.in_(SUCCEEDED_STATUSES),
            Backup.end_time.is_not(None),
        )
        .order_by(Backup.end_time.desc(), Backup.id.desc())
        .limit(1)
    )


_NEWEST_LATERAL = _newest_success(Backup.end_time, Backup.start_time, Backup.size_mb).lateral()
_NEWEST_POSTGRES = select(
    BackupSpec.id,
    _epoch(_NEWEST_LATERAL.c.end_time),
    _epoch(_NEWEST_LATERAL.c.start_time),
    _NEWEST_LATERAL.c.size_mb,
).join(_NEWEST_LATERAL, true())
_NEWEST_ANY = (
    select(
        BackupSpec.id,
        _epoch(_newest_success(Backup.end_time).scalar_subquery()).label("ended"),
        _epoch(_newest_success(Backup.start_time).scalar_subquery()),
        _newest_success(Backup.size_mb).scalar_subquery(),
    )
    .subquery()
    .select()
    .where(literal_column("ended").is_not(None))
)


def _quoted(column: Any) -> Any:
    """A label value escaped for the text format (names are ASCII words: no newlines)."""
    return func.replace(func.replace(column, "\\", "\\\\"), '"', '\\"')


# Per-spec counter series: the database writes their lines, one text per family (70,000
# rows at 10,000 specs: fetching and formatting them one by one takes twice as long).
_LABEL_NAME = case(
    *(
        (MetricCounter.name == name, literal(label))
        for name, label in counters.COUNTER_LABELS.items()
        if label
    ),
    else_=literal("label"),
)
_COUNTER_LINES = (
    select(
        MetricCounter.name,
        func.aggregate_strings(
            MetricCounter.name
            + literal('_total{backup="')
            + _quoted(MetricCounter.backup)
            + literal('",')
            + _LABEL_NAME
            + literal('="')
            + _quoted(MetricCounter.label)
            + literal('"} ')
            + cast(MetricCounter.value, String),
            "\n",
        ),
    )
    .where(MetricCounter.backup != "")
    .group_by(MetricCounter.name)
)
# Series of no spec: backtor_retention_tasks, the notify counters and the schedule lag
# histogram's rows.
_GLOBAL_COUNTERS = select(MetricCounter.name, MetricCounter.label, MetricCounter.value).where(
    MetricCounter.backup == ""
)
# Per spec, over its backups still held and ever verified: when the newest backup whose
# latest verdict is VERIFIED ended, when a VERIFIED verdict was last given, and how many have
# FAILED as their latest verdict. One grouped pass over the backups, no per-spec query.
_IS_VERIFIED = Backup.verify_status == "VERIFIED"
_VERIFIED = (
    select(
        Backup.spec_id,
        _epoch(func.max(case((_IS_VERIFIED, Backup.end_time)))),
        _epoch(func.max(case((_IS_VERIFIED, Backup.last_verified_at)))),
        func.sum(case((Backup.verify_status == "FAILED", 1), else_=0)),
    )
    .where(Backup.status.in_(HELD_STATUSES), Backup.verify_status != "NEVER")
    .group_by(Backup.spec_id)
)
_LAST_TICK = select(SchedulerState.last_tick_at).where(SchedulerState.id == SCHEDULER_STATE_ID)


def _verify_families(specs: Sequence[Row], verified: Sequence[Row]) -> list[Family]:
    newest_verified = Family(
        "backtor_backup_newest_verified_timestamp_seconds",
        "gauge",
        "When the spec's newest backup proven restorable (held, its latest verification "
        "VERIFIED) ended, Unix time; absent until one is (the BacktorBackupNotVerified alert)",
    )
    last_verified = Family(
        "backtor_backup_last_verified_timestamp_seconds",
        "gauge",
        "When a backup the spec still holds was last VERIFIED (the newest such verdict), "
        "Unix time; absent until one is",
    )
    failing = Family(
        "backtor_backup_verify_failures",
        "gauge",
        "Backups the spec still holds whose latest verification FAILED",
    )
    by_spec = {row[0]: row[1:] for row in verified}
    add_newest = newest_verified.lines.append
    add_verified = last_verified.lines.append
    add_failing = failing.lines.append
    for spec_id, name, *_ in specs:
        tag = f'{{backup="{escape_label(name)}"}}'
        ended, moment, failed = by_spec.get(spec_id, (None, None, 0))
        if ended is not None:
            add_newest(f"backtor_backup_newest_verified_timestamp_seconds{tag} {ended!r}\n")
        if moment is not None:
            add_verified(f"backtor_backup_last_verified_timestamp_seconds{tag} {moment!r}\n")
        add_failing(f"backtor_backup_verify_failures{tag} {float(failed or 0)!r}\n")
    return [newest_verified, last_verified, failing]


def _counter_families(lines: Sequence[Row], global_rows: Sequence[Row]) -> list[Family]:
    families = {
        name: Family(f"{name}_total", "counter", _COUNTER_HELP[name])
        for name in counters.COUNTER_LABELS
    }
    for name, joined in lines:
        family = families.get(name)
        if family is not None and joined:
            family.lines.append(f"{joined}\n")
    lag: defaultdict[str, dict[str, float]] = defaultdict(dict)
    unlabelled: defaultdict[str, float] = defaultdict(float)
    for name, label, amount in global_rows:
        if name in families:
            unlabelled[name] += amount
        else:
            lag[name][label] = amount
    for name, label_name in counters.COUNTER_LABELS.items():
        if label_name is None:
            families[name].add(unlabelled[name])
    return [*families.values(), _lag_family(lag)]


def _lag_family(rows: dict[str, dict[str, float]]) -> Family:
    buckets = rows.get(counters.LAG_BUCKET, {})
    family = Family(
        counters.SCHEDULE_LAG,
        "histogram",
        "How late create_backup workflows started: start time minus scheduled fire time",
    )
    for bound in counters.LAG_BUCKETS:
        label = counters.bucket_label(bound)
        family.add(buckets.get(label, 0.0), f'le="{label}"', suffix="_bucket")
    family.add(buckets.get("+Inf", 0.0), 'le="+Inf"', suffix="_bucket")
    family.add(sum(rows.get(counters.LAG_SUM, {}).values()), suffix="_sum")
    family.add(sum(rows.get(counters.LAG_COUNT, {}).values()), suffix="_count")
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
    """Caches a Conductor health check: asked at most every `ttl` seconds.

    The check itself (the Conductor client's is_healthy) is passed in, so observability
    makes no HTTP calls of its own; a check that raises counts as down, so a scrape never
    fails because Conductor answered oddly.
    """

    def __init__(self, health_check: Callable[[], bool], *, ttl: float = 10.0) -> None:
        self.health_check = health_check
        self.ttl = ttl
        self._checked: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._checked is not None and now - self._checked[0] < self.ttl:
                return self._checked[1]
            try:
                up = bool(self.health_check())
            except Exception as exc:  # any failure of the check means "not reachable"
                log.debug("metrics: Conductor health check failed: %s", exc)
                up = False
            self._checked = (time.monotonic(), up)
            return up
