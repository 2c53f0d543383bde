"""BACKTOR_METRICS_MODE=aggregated against real databases: the fleet's figures are what the
per-spec series imply on the same data (sums, the alerts' own overdue and not-verified
rules, the oldest last success), and no series is labelled with a spec."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from backtor.api.app import create_app
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import counters, repository
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import SCHEDULER_STATE_ID, Backup, BackupSpec, BackupStatus, SchedulerState
from backtor.observability import aggregated, freshness, periods
from backtor.observability.aggregated import AggregatedCollector, fleet_name
from backtor.observability.collector import HELD_STATUSES, MetricsCollector
from backtor.runtime.settings import Settings
from tests.support import metrics

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday
DEAD_CONDUCTOR = "http://127.0.0.1:9/api"
# (cron, its longest wait): daily, weekdays (3 days over the weekend), every 10 minutes,
# every second (the 5-minute floor applies), hourly.
SCHEDULES = [
    "0 0 3 * * *",
    "0 0 2 * * MON-FRI",
    "0 */10 * * * *",
    "* * * * * *",
    "0 0 * * * *",
]
VERIFY_SCHEDULES = [None, None, "0 0 5 * * *", "0 0 6 * * SUN"]
PROCESS_LOCAL = ("backtor_api_invocations", "backtor_sql", "backtor_conductor_invocation")

Sample = tuple[str, dict[str, str], float]


def samples(text: str) -> list[Sample]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def by_spec(found: list[Sample], name: str) -> dict[str, float]:
    """One per-spec gauge without other labels: {spec name: value}."""
    return {labels["backup"]: v for n, labels, v in found if n == name}


def total(found: list[Sample], name: str, **labels: str) -> float:
    """The sum over specs (and any other label) of the series that have these labels."""
    return sum(
        v for n, have, v in found if n == name and all(have.get(k) == x for k, x in labels.items())
    )


def one(found: list[Sample], name: str, **labels: str) -> float | None:
    values = [v for n, have, v in found if n == name and have == labels]
    assert len(values) <= 1, (name, labels)
    return values[0] if values else None


engine = metrics.engine
sessions = metrics.sessions


def whole_seconds(moment: datetime) -> datetime:
    """SQLite reads timestamps to the second on /metrics: the fleet is drawn in seconds."""
    return moment.replace(microsecond=0)


def build_fleet(session: Session, seed: int, size: int) -> None:
    """A seeded fleet: every spec state, schedule, age and verdict the figures depend on."""
    rng = random.Random(seed)
    statuses = [*HELD_STATUSES, BackupStatus.REMOVED.value]
    for i in range(size):
        created = whole_seconds(NOW - timedelta(seconds=rng.randrange(600, 40 * 86400)))
        draft = SpecDraft(
            name=f"spec-{i:03d}",
            backup_cron_string=rng.choice(SCHEDULES),
            verify_cron_string=rng.choice(VERIFY_SCHEDULES),
        )
        spec = repository.create_spec(session, normalise_spec(draft), created)
        spec.last_update = rng.choice([created, created + (NOW - created) * rng.random()])
        spec.last_update = whole_seconds(spec.last_update)
        spec.enabled = rng.random() > 0.15
        spec.deleting = rng.random() < 0.05
        window = rng.random()
        if window < 0.05:
            spec.from_date = NOW + timedelta(days=2)  # not yet in its window
        elif window < 0.1:
            spec.to_date = NOW - timedelta(days=1)  # past its window
        elif window < 0.2:
            spec.from_date = whole_seconds(NOW - timedelta(hours=rng.randrange(1, 200)))
        for k in range(rng.randrange(0, 7)):
            status = rng.choice(statuses)
            ended = whole_seconds(NOW - timedelta(seconds=rng.randrange(60, 12 * 86400)))
            held_data = status not in ("RUNNING", "FAILED", "TIMED_OUT")
            verdict = rng.choice(["NEVER", "VERIFIED", "FAILED"]) if held_data else "NEVER"
            session.add(
                Backup(
                    spec_id=spec.id,
                    status=status,
                    scheduled_at=ended - timedelta(minutes=6),
                    start_time=ended - timedelta(minutes=5) if status != "RUNNING" else None,
                    end_time=ended if status != "RUNNING" else None,
                    size_mb=rng.uniform(1, 100) if held_data else None,
                    data_id=f"{spec.name}-{k}" if held_data else None,
                    verify_status=verdict,
                    last_verified_at=ended + timedelta(hours=1) if verdict != "NEVER" else None,
                )
            )
        for family, label_name in counters.COUNTER_LABELS.items():
            if label_name is not None and rng.random() < 0.6:
                label = rng.choice(["success", "error", "COMPLETED", "FAILED", "misfire"])
                counters.increment(session, family, spec.name, label, by=rng.randrange(1, 50))
    counters.increment(session, counters.RETENTION_TASKS, by=17)
    counters.increment(session, counters.NOTIFY_FAILURES, by=2)
    counters.observe_schedule_lag(session, 0.3)
    counters.observe_schedule_lag(session, 75)
    session.execute(
        update(SchedulerState)
        .where(SchedulerState.id == SCHEDULER_STATE_ID)
        .values(last_tick_at=NOW - timedelta(seconds=4))
    )


def alert_counts(per_spec: list[Sample]) -> tuple[int, int, float | None]:
    """BacktorBackupMissing and BacktorBackupNotVerified, as deploy/prometheus/alerts.yml
    writes them, evaluated on the per-spec series at NOW; and the oldest last success of
    the specs with an expected period (those that should be backing up now)."""
    now = NOW.timestamp()
    period = by_spec(per_spec, "backtor_backup_expected_period_seconds")
    verify_period = by_spec(per_spec, "backtor_backup_verify_expected_period_seconds")
    since = by_spec(per_spec, "backtor_backup_active_since_timestamp_seconds")
    last = by_spec(per_spec, "backtor_backup_last_success_timestamp_seconds")
    verified = by_spec(per_spec, "backtor_backup_newest_verified_timestamp_seconds")

    def newer(moment: float | None, start: float) -> float:
        return moment if moment is not None and moment > start else start

    missing = sum(
        1
        for spec, every in period.items()
        if now - newer(last.get(spec), since[spec]) > 1.5 * max(every, 300)
    )
    unverified = sum(
        1
        for spec, every in verify_period.items()
        if spec in period
        and now - newer(verified.get(spec), since[spec]) > 2 * max(every + period[spec], 3600)
    )
    successes = [last[spec] for spec in period if spec in last]
    return missing, unverified, min(successes) if successes else None


@pytest.mark.parametrize("seed", [1, 2])
def test_aggregated_figures_are_what_the_per_spec_series_imply(
    sessions: sessionmaker[Session], seed: int
) -> None:
    with sessions.begin() as session:
        build_fleet(session, seed, size=90)
    per_text = MetricsCollector(sessions, clock=lambda: NOW).exposition()
    fleet_text = AggregatedCollector(sessions, clock=lambda: NOW).exposition()
    per, fleet = samples(per_text), samples(fleet_text)

    assert 'backup="' not in fleet_text
    assert all("backup" not in labels for _, labels, _ in fleet)
    assert one(fleet, "backtor_metrics_info", mode="aggregated") == 1
    assert one(per, "backtor_metrics_info", mode="per-spec") == 1

    # Sums over specs: backtor_X summed is backtor_fleet_X.
    for status in HELD_STATUSES:
        expected = total(per, "backtor_backups", status=status)
        assert total(fleet, "backtor_fleet_backups", status=status) == expected, status
    assert total(fleet, "backtor_fleet_backups") == total(per, "backtor_backups") > 0
    for gauge in ("backtor_removal_failures", "backtor_backup_verify_failures"):
        assert one(fleet, fleet_name(gauge)) == total(per, gauge) > 0, gauge
    for family, label_name in counters.COUNTER_LABELS.items():
        name = f"{family}_total"
        if label_name is None:
            assert one(fleet, name) == one(per, name), name
            continue
        per_label: defaultdict[str, float] = defaultdict(float)
        for n, labels, v in per:
            if n == name:
                per_label[labels[label_name]] += v
        fleet_label = {
            labels[label_name]: v for n, labels, v in fleet if n == fleet_name(family) + "_total"
        }
        assert fleet_label == per_label, family
        assert per_label, family  # the fleet has some of every family

    # Figures that never had a spec label are the same in both modes.
    unlabelled = [
        (n, labels, v)
        for n, labels, v in per
        if "backup" not in labels and not n.startswith(PROCESS_LOCAL)
    ]
    for name, labels, v in unlabelled:
        if name != "backtor_metrics_info":
            assert one(fleet, name, **labels) == v, (name, labels)

    # Specs by state.
    with sessions() as session:
        specs = session.scalars(select(BackupSpec)).all()
    deleting = sum(1 for s in specs if s.deleting)
    paused = sum(1 for s in specs if not s.enabled and not s.deleting)
    assert one(fleet, "backtor_specs", state="deleting") == deleting > 0
    assert one(fleet, "backtor_specs", state="paused") == paused > 0
    assert one(fleet, "backtor_specs", state="enabled") == len(specs) - deleting - paused
    assert one(per, "backtor_backup_specs_paused") == paused

    # The alerts' rules on the per-spec series, and the page's judgement, give the counts.
    missing, unverified, oldest = alert_counts(per)
    active = len(by_spec(per, "backtor_backup_expected_period_seconds"))
    assert 0 < missing < active
    assert one(fleet, "backtor_specs_overdue") == missing
    assert 0 < unverified < active
    assert one(fleet, "backtor_specs_not_verified") == unverified
    assert oldest is not None
    assert one(fleet, "backtor_oldest_last_success_timestamp_seconds") == oldest
    with sessions() as session:
        last = freshness.newest_successes(session, [s.id for s in specs])
    judged = sum(
        freshness.judge(s, last.get(s.id), NOW, freshness.deadline(60)).overdue for s in specs
    )
    assert judged == missing


def test_an_empty_database_gives_zeros_and_no_oldest_success(
    sessions: sessionmaker[Session],
) -> None:
    fleet = samples(AggregatedCollector(sessions, clock=lambda: NOW).exposition())
    assert one(fleet, "backtor_database_up") == 1
    assert one(fleet, "backtor_specs", state="enabled") == 0
    assert one(fleet, "backtor_specs_overdue") == 0
    assert one(fleet, "backtor_specs_not_verified") == 0
    assert one(fleet, "backtor_fleet_backups", status="COMPLETED") == 0
    assert one(fleet, "backtor_oldest_last_success_timestamp_seconds") is None
    assert one(fleet, "backtor_schedule_lag_seconds_count") == 0


def test_a_spec_counts_overdue_exactly_past_its_limit(sessions: sessionmaker[Session]) -> None:
    """Daily: 1.5 days. The edges of the rule: a last success at the limit is not overdue."""
    created = NOW - timedelta(days=30)
    limit = timedelta(seconds=freshness.overdue_limit_seconds(86400))
    with sessions.begin() as session:
        for name, ended in (
            ("at-limit", NOW - limit),
            ("past-limit", NOW - limit - timedelta(seconds=1)),
            ("fresh", NOW - timedelta(hours=1)),
            ("never", None),  # created 30 days ago: overdue
        ):
            draft = SpecDraft(name=name, backup_cron_string="0 0 3 * * *")
            spec = repository.create_spec(session, normalise_spec(draft), created)
            if ended is not None:
                session.add(
                    Backup(
                        spec_id=spec.id,
                        status="COMPLETED",
                        scheduled_at=ended - timedelta(minutes=5),
                        start_time=ended - timedelta(minutes=5),
                        end_time=ended,
                        data_id=name,
                    )
                )
        # Recently edited: its clock restarted, whatever its last success.
        draft = SpecDraft(name="edited", backup_cron_string="0 0 3 * * *")
        edited = repository.create_spec(session, normalise_spec(draft), created)
        edited.last_update = NOW - timedelta(hours=2)
    fleet = samples(AggregatedCollector(sessions, clock=lambda: NOW).exposition())
    assert one(fleet, "backtor_specs_overdue") == 2
    oldest = one(fleet, "backtor_oldest_last_success_timestamp_seconds")
    assert oldest == (NOW - limit - timedelta(seconds=1)).timestamp()


# -- through the API ----------------------------------------------------------------------


def test_the_api_serves_the_mode_the_setting_names(database_url: str) -> None:
    upgrade_to_head(database_url)
    env = {"DATABASE_URL": database_url, "CONDUCTOR_API_URL": DEAD_CONDUCTOR}
    aggregated = create_app(Settings.from_env({**env, "BACKTOR_METRICS_MODE": "aggregated"}))
    default = create_app(Settings.from_env(env))
    with TestClient(aggregated) as fleet_api, TestClient(default) as per_spec_api:
        body = {"name": "alpha", "backupCronString": "0 */10 * * * *"}
        assert fleet_api.post("/backup", json=body).status_code == 201
        fleet_text = fleet_api.get("/metrics").text
        per_text = per_spec_api.get("/metrics").text
    fleet, per = samples(fleet_text), samples(per_text)
    assert one(fleet, "backtor_metrics_info", mode="aggregated") == 1
    assert 'backup="' not in fleet_text
    assert one(fleet, "backtor_specs", state="enabled") == 1
    assert one(fleet, "backtor_specs_overdue") == 0  # created just now
    assert one(fleet, "backtor_conductor_up") == 0
    # This process's own instruments are unchanged: the POST above was counted.
    posted = one(fleet, "backtor_api_invocations_total", entity="backup", status="201")
    assert posted is not None and posted >= 1
    assert one(per, "backtor_metrics_info", mode="per-spec") == 1
    assert one(per, "backtor_backup_expected_period_seconds", backup="alpha") == 600


def test_sqlite_counts_many_schedules_in_several_passes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite takes the cutoffs as VALUES in chunks: the passes add up to one pass's figures."""
    upgrade_to_head(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            build_fleet(session, seed=3, size=60)
        whole = samples(AggregatedCollector(sessions, clock=lambda: NOW).exposition())
        monkeypatch.setattr(aggregated, "SQLITE_SCHEDULES_PER_QUERY", 2)
        chunked = samples(AggregatedCollector(sessions, clock=lambda: NOW).exposition())
    finally:
        engine.dispose()
    shared = [s for s in whole if not s[0].startswith(PROCESS_LOCAL)]
    assert shared == [s for s in chunked if not s[0].startswith(PROCESS_LOCAL)]
    assert one(whole, "backtor_specs_overdue") and one(whole, "backtor_specs_not_verified")


# -- PostgreSQL: the cutoffs per period class, against the cutoffs per schedule ------------

# Zones with offset changes (Lord Howe shifts by 30 minutes) and one without.
CLASS_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]
# Times of day inside or at the edges of those zones' shift windows (02:00-03:00 local in
# Berlin and New York, 01:30-02:00 in Lord Howe, and the second either side).
EDGE_TIMES = ["0 0 2", "59 59 1", "0 0 3", "1 0 3", "30 30 2", "0 30 1", "0 0 1", "0 59 1"]
OTHER_CRONS = [
    "0 0 * * * *",
    "0 */10 * * * *",
    "0 30 2 * * MON-FRI",
    "0 0 2 * * SUN",
    "0 0 4 1 * *",
    "05 07 03 * * *",  # leading zeros: periods.daily_time reads it as 03:07:05
]


def class_fleet(session: Session, seed: int, size: int, now: datetime) -> None:
    """Daily crons at many times of day (a few inside shift windows), hourly and weekly
    ones, daily verify crons at many times, in zones with and without offset changes; last
    successes spread around the limits, so a period off by an hour shows in the counts."""
    rng = random.Random(seed)
    for i in range(size):
        kind = rng.random()
        if kind < 0.6:
            at = rng.randrange(0, 86_400, 7)
            cron = f"{at % 60} {at // 60 % 60} {at // 3600} * * *"
        elif kind < 0.75:
            cron = f"{rng.choice(EDGE_TIMES)} * * *"
        else:
            cron = rng.choice(OTHER_CRONS)
        verify = None
        if rng.random() < 0.4:
            at = rng.randrange(0, 86_400, 13)
            verify = rng.choice(
                [f"{at % 60} {at // 60 % 60} {at // 3600} * * *", f"{rng.choice(EDGE_TIMES)} * * *"]
            )
        draft = SpecDraft(name=f"class-{i:04d}", backup_cron_string=cron, verify_cron_string=verify)
        created = whole_seconds(now - timedelta(days=rng.choice([1, 2, 40])))
        spec = repository.create_spec(session, normalise_spec(draft), created)
        spec.timezone = rng.choice(CLASS_ZONES)
        spec.enabled = rng.random() > 0.05
        for k in range(rng.randrange(0, 3)):
            ended = whole_seconds(now - timedelta(seconds=rng.randrange(60, 4 * 86_400)))
            session.add(
                Backup(
                    spec_id=spec.id,
                    status="COMPLETED",
                    scheduled_at=ended - timedelta(minutes=6),
                    start_time=ended - timedelta(minutes=5),
                    end_time=ended,
                    data_id=f"{spec.name}-{k}",
                    verify_status=rng.choice(["NEVER", "VERIFIED"]),
                )
            )


# Around Berlin's and New York's spring and autumn changes, and a plain summer day.
CLASS_NOWS = [
    datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    datetime(2026, 3, 30, 12, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 7, 0, tzinfo=UTC),
    datetime(2026, 11, 2, 3, 0, tzinfo=UTC),
    NOW,
]


@pytest.mark.parametrize("seed", [11, 12])
def test_cutoffs_by_class_count_what_cutoffs_by_schedule_count(
    postgres_url: str, seed: int
) -> None:
    """The class path (PostgreSQL's) gives exactly the figures of the per-schedule path on
    a fleet of hundreds of distinct schedules, at instants around offset changes."""
    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    try:
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            class_fleet(session, seed, size=400, now=CLASS_NOWS[0])
        figures = set()
        for now in CLASS_NOWS:
            collector = AggregatedCollector(
                sessions, clock=lambda now=now: now, period_budget_seconds=600
            )
            with sessions() as session:
                schedules = session.execute(aggregated._active_schedules(now)).all()
                deadline = 1e18
                by_schedule = collector._freshness_by_schedule(session, schedules, now, deadline)
                by_class = collector._freshness_by_class(session, now, deadline)
                classes = session.execute(
                    aggregated._SCHEDULE_CLASSES,
                    {"window_zones": [], "window_bounds": [], "now": now},
                ).all()
            assert by_class == by_schedule, now
            assert len(classes) < len(schedules) / 3  # the schedules did collapse
            figures.add(by_class[1:])
        assert len(schedules) > 200
        assert all(overdue > 0 and not_verified > 0 for overdue, not_verified in figures)
        assert len(figures) > 1
    finally:
        engine.dispose()


def test_the_database_keys_no_two_period_classes_together(postgres_url: str) -> None:
    """Schedules that share a class key in SQL share periods.period_class (so one expected
    period serves them), and every daily time outside a shift window shares its class
    with the others of its stretch of the day."""
    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    now = CLASS_NOWS[0]
    try:
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            class_fleet(session, seed=5, size=600, now=now)
        collector = AggregatedCollector(sessions, clock=lambda: now)
        zones: list[str] = []
        bounds: list[int] = []
        for zone in CLASS_ZONES:
            for bound in aggregated._window_bounds(collector.periods.windows(zone, now)):
                zones.append(zone)
                bounds.append(bound)
        keyed = aggregated._KEYED
        with sessions() as session:
            rows = session.execute(
                select(
                    keyed.c.cron,
                    keyed.c.zone,
                    keyed.c.verify_cron,
                    keyed.c.key_cron,
                    keyed.c.key_verify,
                    keyed.c.at,
                    keyed.c.verify_at,
                ),
                {"window_zones": zones, "window_bounds": bounds, "now": now},
            ).all()
    finally:
        engine.dispose()
    windows = {zone: collector.periods.windows(zone, now) for zone in CLASS_ZONES}
    python_class: dict[tuple[object, ...], set[tuple[object, ...]]] = defaultdict(set)
    sql_class: dict[tuple[object, ...], set[tuple[object, ...]]] = defaultdict(set)
    for cron, zone, verify, key_cron, key_verify, at, verify_at in rows:
        mine = (
            periods.period_class(cron, zone, windows[zone]),
            periods.period_class(verify, zone, windows[zone]) if verify else None,
        )
        sql_class[key_cron, zone, key_verify, at, verify_at].add(mine)
        python_class[mine].add((key_cron, zone, key_verify, at, verify_at))
    assert all(len(found) == 1 for found in sql_class.values())  # never coarser
    assert len(sql_class) == len(python_class)  # and as coarse: the same partition
    assert any(windows[zone] for zone in CLASS_ZONES)
    assert len(rows) > 3 * len(sql_class)
