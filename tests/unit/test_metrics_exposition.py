"""The pure parts of /metrics: the text format, route entities, a schedule's expected period."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backtor.api.metrics import entity_of
from backtor.core.cron import CronSchedule, latest_fire_at_or_before, next_fire
from backtor.db.counters import LAG_BUCKETS, bucket_label
from backtor.observability import freshness
from backtor.observability.aggregated import fleet_name
from backtor.observability.collector import ConductorProbe
from backtor.observability.exposition import Family, label_pairs, render
from backtor.observability.periods import PeriodCache, expected_period_seconds

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0
UTC_ZONE = ZoneInfo("UTC")
# A Wednesday, far from any DST change in Europe.
WEDNESDAY = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def test_render_writes_the_text_format_prometheus_parses() -> None:
    gauge = Family("backtor_backups", "gauge", "Backups held\nper status")
    gauge.add(3, label_pairs(backup='we"ird\\name\nx', status="COMPLETED"))
    gauge.add(1, label_pairs(backup="plain", status="FAILED"))
    counter = Family("backtor_retention_tasks_total", "counter", "Runs")
    counter.add(7)
    text = render([gauge, counter])
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.labels.get("backup"), s.labels.get("status")): s.value
        for s in parsed["backtor_backups"].samples
    }
    assert samples == {('we"ird\\name\nx', "COMPLETED"): 3.0, ("plain", "FAILED"): 1.0}
    assert parsed["backtor_backups"].documentation == "Backups held\nper status"
    assert parsed["backtor_retention_tasks"].type == "counter"
    assert [(s.name, s.value) for s in parsed["backtor_retention_tasks"].samples] == [
        ("backtor_retention_tasks_total", 7.0)
    ]


def test_render_writes_infinities_and_families_without_samples() -> None:
    empty = Family("backtor_backup_last_size_mbytes", "gauge", "Size")
    odd = Family("backtor_odd", "gauge", "Odd")
    odd.add(float("inf"))
    text = render([empty, odd])
    assert "# TYPE backtor_backup_last_size_mbytes gauge\n" in text
    assert "backtor_odd +Inf\n" in text


def test_bucket_labels_are_written_like_client_libraries_write_them() -> None:
    assert bucket_label(1) == "1.0"
    assert bucket_label(0.25) == "0.25"
    assert list(LAG_BUCKETS) == sorted(LAG_BUCKETS)


@pytest.mark.parametrize(
    ("path", "entity"),
    [
        ("/backup", "backup"),
        ("/backup/{name}", "backup"),
        ("/backup/{name}/materialized", "materialized"),
        ("/backup/{name}/materialized/{backup_id}/pin", "pin"),
        ("/backup/{name}/retention", "retention"),
        ("/metrics", "metrics"),
        ("/openapi.json", "openapi"),
        ("/", "root"),
        (None, "unknown"),
    ],
)
def test_entity_is_the_last_fixed_segment_of_the_route(path: str | None, entity: str) -> None:
    assert entity_of(path) == entity


@pytest.mark.parametrize(
    ("cron", "zone", "expected"),
    [
        ("* * * * * *", "UTC", 1.0),
        ("0 */5 * * * *", "UTC", 300.0),
        ("0 0 3 * * *", "UTC", DAY),
        # Weekdays only: the weekend gap, so Saturday and Sunday do not page.
        ("0 0 2 * * MON-FRI", "UTC", 3 * DAY),
        # Working hours on weekdays: from Friday 17:55 to Monday 09:00.
        ("0 */5 9-17 * * MON-FRI", "UTC", 2 * DAY + 15 * 3600 + 5 * 60),
        # Month ends: the longest month-to-month gap within a year is 31 days.
        ("0 0 0 L * *", "UTC", 31 * DAY),
        # January only: the wait from January 31st to the next January 1st.
        ("0 0 0 * 1 *", "UTC", 335 * DAY),
        ("0 0 3 * * *", "Europe/Berlin", DAY),
    ],
)
def test_expected_period_is_the_longest_gap_between_fires(
    cron: str, zone: str, expected: float
) -> None:
    assert expected_period_seconds(CronSchedule(cron), ZoneInfo(zone), WEDNESDAY) == expected


def test_expected_period_sees_the_long_day_when_clocks_go_back() -> None:
    # Berlin goes back an hour on Sunday 2026-10-25: 03:00 to 03:00 takes 25 hours.
    before = datetime(2026, 10, 21, 12, 0, tzinfo=UTC)
    berlin = ZoneInfo("Europe/Berlin")
    assert expected_period_seconds(CronSchedule("0 0 3 * * *"), berlin, before) == DAY + 3600


def test_expected_period_covers_every_gap_of_a_random_looking_schedule() -> None:
    """Brute force over 8 days agrees with the sampled answer."""
    schedule = CronSchedule("0 7,43 1,2,13 * * TUE,SAT")
    first = latest_fire_at_or_before(schedule, WEDNESDAY, UTC_ZONE)
    assert first is not None
    fires = [first]
    while fires[-1] < WEDNESDAY + timedelta(days=40):
        fires.append(next_fire(schedule, fires[-1], UTC_ZONE))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
    assert expected_period_seconds(schedule, UTC_ZONE, WEDNESDAY) == max(gaps)


def test_period_cache_computes_once_and_respects_its_budget() -> None:
    cache = PeriodCache()
    far_future = float("inf")
    assert cache.get("0 0 3 * * *", "UTC", WEDNESDAY, far_future) == DAY
    # Cached: even a spent budget returns it.
    assert cache.get("0 0 3 * * *", "UTC", WEDNESDAY, deadline=0.0) == DAY
    # Another daily time is the same class (periods.period_class): cached too.
    assert cache.get("0 0 4 * * *", "UTC", WEDNESDAY, deadline=0.0) == DAY
    # Not cached and no budget left: left out for now.
    assert cache.get("0 */5 * * * *", "UTC", WEDNESDAY, deadline=0.0) is None
    assert cache.get("0 */5 * * * *", "UTC", WEDNESDAY, far_future) == 300


def test_conductor_probe_asks_at_most_once_per_ttl_and_counts_a_raising_check_as_down() -> None:
    answers: list[bool | Exception] = [True, RuntimeError("odd answer")]
    asked: list[int] = []

    def check() -> bool:
        asked.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cached = ConductorProbe(check, ttl=3600)
    assert cached() is True
    assert cached() is True
    assert len(asked) == 1
    every_time = ConductorProbe(check, ttl=0)
    assert every_time() is False


def test_the_aggregated_counts_apply_the_per_spec_alerts_own_limits() -> None:
    """backtor_specs_overdue and _not_verified count by freshness.py's limits: the rules'."""
    rules = " ".join((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text().split())
    period = "max by (backup) (backtor_backup_expected_period_seconds)"
    verify_period = "max by (backup) (backtor_backup_verify_expected_period_seconds)"
    factor, floor = freshness.OVERDUE_FACTOR, freshness.MIN_PERIOD_SECONDS
    assert f"> {factor:g} * clamp_min({period}, {floor:g})" in rules
    factor, floor = freshness.NOT_VERIFIED_FACTOR, freshness.MIN_VERIFY_WINDOW_SECONDS
    assert f"> {factor:g} * clamp_min( {verify_period} + {period}, {floor:g} )" in rules
    assert freshness.overdue_limit_seconds(DAY) == 1.5 * DAY
    assert freshness.overdue_limit_seconds(1) == 450
    assert freshness.not_verified_limit_seconds(DAY, 7 * DAY) == 16 * DAY
    assert freshness.not_verified_limit_seconds(60, 60) == 7200


def test_fleet_families_are_the_per_spec_ones_renamed() -> None:
    assert fleet_name("backtor_backups") == "backtor_fleet_backups"
    assert fleet_name("backtor_backup_trigger") + "_total" == "backtor_fleet_backup_trigger_total"
