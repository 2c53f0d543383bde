"""Expected periods are cached by class (backtor.observability.periods.period_class): every
schedule of a class must have the period the class's first member was computed with."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backtor.core.cron import CronSchedule, latest_fire_at_or_before, next_fire
from backtor.observability.periods import (
    PeriodCache,
    daily_time,
    period_class,
    shift_windows,
)

# Fixed offsets, ordinary DST, DST of 30 minutes, a southern one, a zone whose rules move
# (Casablanca: DST suspended each Ramadan), one at +12:45 with DST.
ZONES = [
    "UTC",
    "Asia/Kolkata",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Africa/Casablanca",
    "Pacific/Chatham",
]
DAYS = ["* * *", "* * MON-FRI", "* * SAT", "1 * *", "L * *", "15 1,7 *", "*/10 * *", "? * 2#3"]
AROUND = [datetime(2026, 12, 1, 21, 0, tzinfo=UTC), datetime(2027, 3, 27, 23, 30, tzinfo=UTC)]


def _cron(second_of_day: int, days: str) -> str:
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    return f"{second} {minute} {hour} {days}"


def _longest_gap(cron: str, tz: ZoneInfo, around: datetime) -> float:
    """Every gap between consecutive fires from the one at or before `around` to a year
    after it, the longest: what the sampled expected_period_seconds approximates."""
    schedule = CronSchedule(cron)
    fire = latest_fire_at_or_before(schedule, around, tz) or around
    until = around + timedelta(days=366)
    longest = 0.0
    while fire < until:
        following = next_fire(schedule, fire, tz)
        longest = max(longest, (following - fire).total_seconds())
        fire = following
    return longest


@pytest.mark.parametrize("zone", ZONES)
def test_schedules_of_one_class_have_one_longest_gap(zone: str) -> None:
    """The class's claim, on the exact longest gap. (The cache keeps the sampled period of
    a class's first member: members differ only in where their fires fall against the
    samples, which move with `now` anyway.)"""
    rng = random.Random(zone)
    tz = ZoneInfo(zone)
    for around in AROUND:
        windows = shift_windows(tz, around)
        for days in DAYS:
            classes: dict[object, tuple[str, float]] = {}
            # Times on both sides of each window's edges, and random ones.
            times = {t for start, end in windows for t in (start - 1, start, end - 1, end)}
            times |= {rng.randrange(86_400) for _ in range(4)}
            for moment in sorted(t for t in times if 0 <= t < 86_400):
                cron = _cron(moment, days)
                longest = _longest_gap(cron, tz, around)
                first = classes.setdefault(period_class(cron, zone, windows), (cron, longest))
                assert longest == first[1], (zone, around, cron, first[0])


def test_a_spread_fleet_shares_a_few_classes() -> None:
    """86,400 daily crons, one per second of the day: in UTC one class; in Berlin the hour
    its changes skip and repeat (each time its own class) and the stretches around it."""
    around = AROUND[0]
    assert shift_windows(ZoneInfo("UTC"), around) == ()
    assert len({period_class(_cron(t, "* * *"), "UTC", ()) for t in range(86_400)}) == 1
    windows = shift_windows(ZoneInfo("Europe/Berlin"), around)
    assert windows == ((2 * 3600 - 1, 3 * 3600 + 1),)
    keys = {period_class(_cron(t, "* * *"), "Europe/Berlin", windows) for t in range(86_400)}
    assert len(keys) == 3600 + 2 + 2


def test_only_crons_with_one_time_a_day_are_classed() -> None:
    assert daily_time("5 30 2 * * *") == (2 * 3600 + 30 * 60 + 5, "0 0 0 * * *")
    for other in ("0 */5 * * * *", "0 0 1,13 * * *", "0 0-5 3 * * *", "0 0 * * *"):
        assert daily_time(other) is None
        assert period_class(other, "UTC", ()) == (other, "UTC", None)


def test_the_cache_drops_its_oldest_entries_when_full_not_all() -> None:
    cache = PeriodCache(max_entries=10)
    now = AROUND[0]
    far = float("inf")
    for hour in range(12):
        assert cache.get(f"0 0 {hour} * * *", "UTC", now, far) == 86_400
    assert cache.get("0 0 5 * * *", "UTC", now, deadline=0.0) == 86_400
    crons = [f"0 {m} * * * *" for m in range(12)]
    for cron in crons:
        assert cache.get(cron, "UTC", now, far) == 86_400 / 24
    # All twelve daily crons made one entry; of the 13 entries, the 3 oldest went, one at a
    # time. Past the deadline only a cached period answers.
    assert cache.get("0 0 5 * * *", "UTC", now, deadline=0.0) is None
    assert [cache.get(c, "UTC", now, deadline=0.0) for c in crons[:2]] == [None, None]
    assert {cache.get(c, "UTC", now, deadline=0.0) for c in crons[2:]} == {86_400 / 24}
