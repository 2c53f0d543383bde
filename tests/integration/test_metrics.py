"""/metrics against real databases: counters written with their events, figures read back."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from backtor.api.app import create_app
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import counters, repository
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import (
    SCHEDULER_STATE_ID,
    Backup,
    BackupSpec,
    BackupStatus,
    Fire,
    SchedulerState,
)
from backtor.observability.collector import MetricsCollector
from backtor.runtime.settings import Settings
from backtor.scheduling.fires import schedule_due_fires
from tests.support import metrics
from tests.support.metrics import Samples, parse, value

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
DEAD_CONDUCTOR = "http://127.0.0.1:9/api"  # nothing listens on the discard port
# The migrated test database (tests.support.metrics), for every test here.
engine = metrics.engine
sessions = metrics.sessions


def add_spec(session: Session, name: str, cron: str = "0 0 3 * * *", **fields: object) -> int:
    draft = SpecDraft(name=name, backup_cron_string=cron, **fields)  # type: ignore[arg-type]
    spec = repository.create_spec(session, normalise_spec(draft), NOW - timedelta(days=30))
    return spec.id


def add_backup(
    session: Session,
    spec_id: int,
    status: BackupStatus,
    ended: datetime | None,
    size: float | None = None,
    took: timedelta = timedelta(minutes=5),
) -> None:
    session.add(
        Backup(
            spec_id=spec_id,
            status=status.value,
            scheduled_at=(ended or NOW) - took - timedelta(seconds=1),
            start_time=ended - took if ended else None,
            end_time=ended,
            size_mb=size,
            data_id=f"data-{random.random()}" if ended else None,
        )
    )


# -- counters -----------------------------------------------------------------------------


def test_counters_are_written_with_their_transaction_and_only_then(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        add_spec(session, "alpha")
    with sessions() as session:
        counters.increment(session, counters.TRIGGER, "alpha", "success")
        session.execute(select(1))
        session.rollback()
    with sessions() as session:
        assert counters.read_all(session) == []
    with sessions.begin() as session:
        counters.increment(session, counters.TRIGGER, "alpha", "success")
        counters.increment(session, counters.TRIGGER, "alpha", "success")
        counters.increment(session, counters.RETENTION_TASKS)
        counters.observe_schedule_lag(session, 0.7)
        assert counters.pending(session)[(counters.TRIGGER, "alpha", "success")] == 2
    with sessions.begin() as session:
        counters.increment(session, counters.TRIGGER, "alpha", "success", by=3)
    with sessions() as session:
        rows = {(n, b, label): v for n, b, label, v in counters.read_all(session)}
    assert rows[(counters.TRIGGER, "alpha", "success")] == 5
    assert rows[(counters.RETENTION_TASKS, "", "")] == 1
    assert (counters.LAG_BUCKET, "", "0.5") not in rows  # 0.7 s is above that bound
    assert rows[(counters.LAG_BUCKET, "", "1.0")] == 1
    assert rows[(counters.LAG_BUCKET, "", "+Inf")] == 1
    assert rows[(counters.LAG_SUM, "", "")] == pytest.approx(0.7)


def test_a_deleted_spec_takes_its_series_with_it(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        alpha = add_spec(session, "alpha")
        add_spec(session, "beta")
    with sessions.begin() as session:
        counters.increment(session, counters.WORKFLOW, "alpha", "COMPLETED")
        counters.increment(session, counters.WORKFLOW, "beta", "COMPLETED")
        counters.increment(session, counters.RETENTION_TASKS)
    with sessions.begin() as session:
        session.execute(delete(BackupSpec).where(BackupSpec.id == alpha))
        # Counted in the transaction that deletes the spec: dropped with it.
        counters.increment(session, counters.WORKFLOW, "alpha", "FAILED")
    with sessions() as session:
        left = {(n, b) for n, b, _, _ in counters.read_all(session)}
    assert left == {(counters.WORKFLOW, "beta"), (counters.RETENTION_TASKS, "")}


def test_concurrent_increments_add_up_without_deadlocks(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            for name in ("a", "b", "c"):
                add_spec(session, name)
        errors: list[BaseException] = []

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(25):
                    with sessions.begin() as session:
                        # Every transaction touches the shared row and specs in any order.
                        for name in rng.sample(["a", "b", "c"], 3):
                            counters.increment(session, counters.TRIGGER, name, "success")
                        counters.increment(session, counters.RETENTION_TASKS)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with sessions() as session:
            rows = {(n, b): v for n, b, _, v in counters.read_all(session)}
        assert rows == {
            (counters.TRIGGER, "a"): 200,
            (counters.TRIGGER, "b"): 200,
            (counters.TRIGGER, "c"): 200,
            (counters.RETENTION_TASKS, ""): 200,
        }
    finally:
        engine.dispose()


# -- the figures --------------------------------------------------------------------------


def test_figures_are_read_from_the_current_state(sessions: sessionmaker[Session]) -> None:
    tick = NOW - timedelta(seconds=7)
    with sessions.begin() as session:
        daily = add_spec(session, "daily")
        weekdays = add_spec(session, "weekdays", cron="0 0 2 * * MON-FRI")
        add_spec(session, "off", enabled=False)
        add_spec(session, "later", from_date=(NOW + timedelta(days=2)).isoformat())
        newest = NOW - timedelta(hours=2)
        add_backup(session, daily, BackupStatus.COMPLETED, newest, size=12.5)
        add_backup(session, daily, BackupStatus.COMPLETED, NOW - timedelta(days=1), size=11.0)
        add_backup(session, daily, BackupStatus.REMOVE_FAILED, NOW - timedelta(days=2), 10.0)
        add_backup(session, daily, BackupStatus.REMOVED, NOW - timedelta(days=3), size=9.0)
        add_backup(session, daily, BackupStatus.FAILED, None)
        # A removed backup newer than any held one does not count as the last success.
        add_backup(session, weekdays, BackupStatus.REMOVED, NOW - timedelta(hours=1), 1.0)
        add_backup(session, weekdays, BackupStatus.REMOVING, NOW - timedelta(days=4), 3.0)
        session.execute(
            SchedulerState.__table__.update()
            .where(SchedulerState.id == SCHEDULER_STATE_ID)
            .values(last_tick_at=tick)
        )
        counters.increment(session, counters.TRIGGER, "daily", "success", by=4)
        counters.increment(session, counters.TRIGGER, "daily", "error")
        counters.increment(session, counters.SKIPPED, "daily", "running")
        counters.increment(session, counters.RETENTION_TASKS, by=3)
        counters.observe_schedule_lag(session, 0.2)
        counters.observe_schedule_lag(session, 42)
    collector = MetricsCollector(sessions, clock=lambda: NOW)
    samples = parse(collector.exposition())

    assert value(samples, "backtor_database_up") == 1
    assert value(samples, "backtor_backups", backup="daily", status="COMPLETED") == 2
    assert value(samples, "backtor_backups", backup="daily", status="REMOVE_FAILED") == 1
    assert value(samples, "backtor_backups", backup="daily", status="FAILED") == 1
    assert value(samples, "backtor_backups", backup="daily", status="REMOVED") is None
    assert value(samples, "backtor_backups", backup="weekdays", status="REMOVING") == 1
    assert value(samples, "backtor_removal_failures", backup="daily") == 1
    assert value(samples, "backtor_removal_failures", backup="off") == 0

    last = "backtor_backup_last_success_timestamp_seconds"
    assert value(samples, last, backup="daily") == newest.timestamp()
    assert value(samples, last, backup="weekdays") == (NOW - timedelta(days=4)).timestamp()
    assert value(samples, last, backup="off") is None
    assert value(samples, "backtor_backup_last_size_mbytes", backup="daily") == 12.5
    assert value(samples, "backtor_backup_last_time_seconds", backup="daily") == 300

    period = "backtor_backup_expected_period_seconds"
    assert value(samples, period, backup="daily") == 86400
    assert value(samples, period, backup="weekdays") == 3 * 86400
    assert value(samples, period, backup="off") is None  # disabled: nothing is expected
    assert value(samples, period, backup="later") is None  # not in its window yet
    since = value(samples, "backtor_backup_active_since_timestamp_seconds", backup="daily")
    assert since == (NOW - timedelta(days=30)).timestamp()

    assert value(samples, "backtor_backup_trigger_total", backup="daily", status="success") == 4
    assert value(samples, "backtor_backup_trigger_total", backup="daily", status="error") == 1
    assert value(samples, "backtor_backup_skipped_total", backup="daily", reason="running") == 1
    assert value(samples, "backtor_retention_tasks_total") == 3
    assert value(samples, "backtor_schedule_lag_seconds_bucket", le="0.25") == 1
    assert value(samples, "backtor_schedule_lag_seconds_bucket", le="60.0") == 2
    assert value(samples, "backtor_schedule_lag_seconds_bucket", le="+Inf") == 2
    assert value(samples, "backtor_schedule_lag_seconds_count") == 2
    assert value(samples, "backtor_schedule_lag_seconds_sum") == pytest.approx(42.2)
    assert value(samples, "backtor_tick_last_run_timestamp_seconds") == tick.timestamp()


def test_an_empty_database_still_declares_every_family(sessions: sessionmaker[Session]) -> None:
    text = MetricsCollector(sessions, clock=lambda: NOW).exposition()
    samples = parse(text)
    assert value(samples, "backtor_retention_tasks_total") == 0
    assert value(samples, "backtor_schedule_lag_seconds_count") == 0
    for family in (
        "backtor_backups",
        "backtor_backup_trigger_total",
        "backtor_backup_last_success_timestamp_seconds",
        "backtor_backup_expected_period_seconds",
        "backtor_tick_last_run_timestamp_seconds",
        "backtor_conductor_invocation",
        "backtor_api_invocations_total",
        "backtor_sql_total",
    ):
        assert f"# TYPE {family} " in text


def test_an_unreachable_database_is_reported_not_fatal() -> None:
    engine = make_engine("postgresql://backtor:x@127.0.0.1:1/nowhere")
    try:
        collector = MetricsCollector(make_session_factory(engine), conductor_up=lambda: False)
        samples = parse(collector.exposition())
    finally:
        engine.dispose()
    assert value(samples, "backtor_database_up") == 0
    assert value(samples, "backtor_conductor_up") == 0
    assert not any(name == "backtor_backups" for name, _ in samples)


# -- through the API ----------------------------------------------------------------------


def _settings(database_url: str, **env: str) -> Settings:
    return Settings.from_env(
        {"DATABASE_URL": database_url, "CONDUCTOR_API_URL": DEAD_CONDUCTOR, **env}
    )


def _shared(text: str) -> Samples:
    local = ("backtor_api_invocations", "backtor_sql", "backtor_conductor_invocation")
    return {key: v for key, v in parse(text).items() if not key[0].startswith(local)}


def test_two_api_replicas_report_the_same_figures(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)
    first = create_app(_settings(postgres_url))
    second = create_app(_settings(postgres_url))
    with TestClient(first) as one, TestClient(second) as two:
        for name in ("alpha", "beta"):
            body = {"name": name, "backupCronString": "0 */10 * * * *"}
            assert one.post("/backup", json=body).status_code == 201
        engine = make_engine(postgres_url)
        try:
            with make_session_factory(engine).begin() as session:
                alpha = session.scalar(select(BackupSpec.id).where(BackupSpec.name == "alpha"))
                assert alpha is not None
                add_backup(session, alpha, BackupStatus.COMPLETED, datetime.now(UTC), 5.0)
                counters.increment(session, counters.TRIGGER, "alpha", "success")
        finally:
            engine.dispose()
        seen_by_one = _shared(one.get("/metrics").text)
        seen_by_two = _shared(two.get("/metrics").text)
    assert seen_by_one == seen_by_two
    assert value(seen_by_two, "backtor_backups", backup="alpha", status="COMPLETED") == 1
    assert value(seen_by_two, "backtor_backup_trigger_total", backup="alpha", status="success") == 1
    assert value(seen_by_two, "backtor_backup_expected_period_seconds", backup="beta") == 600
    assert value(seen_by_two, "backtor_conductor_up") == 0


def test_the_api_counts_its_requests_and_statements(sqlite_url: str) -> None:
    upgrade_to_head(sqlite_url)
    app = create_app(_settings(sqlite_url, BACKTOR_API_TOKEN="letmein"))
    auth = {"Authorization": "Bearer letmein"}
    with TestClient(app) as client:
        before = parse(client.get("/metrics").text)
        assert client.get("/backup").status_code == 401
        assert client.get("/backup", headers=auth).status_code == 200
        assert client.get("/backup/nope/materialized", headers=auth).status_code == 404
        assert client.get("/no/such/route", headers=auth).status_code == 404
        after = parse(client.get("/metrics").text)

    def delta(entity: str, status: str) -> float:
        key = (
            "backtor_api_invocations_total",
            frozenset({"entity": entity, "status": status}.items()),
        )
        return after.get(key, 0) - before.get(key, 0)

    assert delta("backup", "401") == 1
    assert delta("backup", "200") == 1
    assert delta("materialized", "404") == 1
    assert delta("unknown", "404") == 1
    assert delta("metrics", "200") == 1  # the first scrape; /metrics needs no token
    statements = ("backtor_sql_total", frozenset({"status": "ok"}.items()))
    assert after[statements] > before.get(statements, 0)


# -- counted where the events happen ------------------------------------------------------


def test_misfires_are_counted_with_the_fires_they_skip(sessions: sessionmaker[Session]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with sessions.begin() as session:
        spec_id = add_spec(session, "late", cron="0 * * * * *", misfire_grace_seconds=60)
        # The scheduler was down for ten minutes: its fires since then are passed over.
        session.execute(
            BackupSpec.__table__.update()
            .where(BackupSpec.id == spec_id)
            .values(next_fire_at=now - timedelta(minutes=10))
        )
    with sessions.begin() as session:
        report = schedule_due_fires(session, now)
    with sessions() as session:
        skipped = session.scalars(
            select(Fire).where(Fire.spec_id == spec_id, Fire.status == "SKIPPED")
        ).all()
    assert report.skipped == len(skipped) >= 9
    samples = parse(MetricsCollector(sessions).exposition())
    assert value(samples, "backtor_backup_skipped_total", backup="late", reason="misfire") == len(
        skipped
    )
    assert value(samples, "backtor_backup_warn_total", backup="late", status="warning") == len(
        skipped
    )


def test_a_manual_trigger_conductor_cannot_take_is_counted(database_url: str) -> None:
    """Conductor is a real address where nothing listens: the API answers 503."""
    upgrade_to_head(database_url)
    with TestClient(create_app(_settings(database_url))) as client:
        body = {"name": "now", "backupCronString": "0 0 3 * * *"}
        assert client.post("/backup", json=body).status_code == 201
        assert client.post("/backup/now/materialized").status_code == 503
        samples = parse(client.get("/metrics").text)
    assert value(samples, "backtor_backup_trigger_total", backup="now", status="error") == 1
    assert value(samples, "backtor_backup_warn_total", backup="now", status="error") == 1
    reason = "conductor_unavailable"
    assert value(samples, "backtor_backup_skipped_total", backup="now", reason=reason) == 1
    assert value(samples, "backtor_backup_trigger_total", backup="now", status="success") is None
    unavailable = {"operation": "get_correlated", "status": "unavailable"}
    calls = value(samples, "backtor_conductor_invocation_count", **unavailable)
    assert calls is not None and calls >= 1  # process-local: this process's calls
