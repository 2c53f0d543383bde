"""Fire decisions: the latest due fire starts once; older ones are missed, never a burst."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from backtor.core.cron import parse_cron
from backtor.core.schedule import Timing, decide, first_fire, jitter_offset

UTC_ZONE = ZoneInfo("UTC")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def every_two_seconds(**kwargs: object) -> Timing:
    return Timing(parse_cron("*/2 * * * * *"), UTC_ZONE, **kwargs)  # type: ignore[arg-type]


def test_on_time_fire_starts_and_the_next_one_is_scheduled() -> None:
    timing = every_two_seconds()
    d = decide(timing, due_at=at("2026-01-01T00:00:10"), now=at("2026-01-01T00:00:10.300"))
    assert d.fire == at("2026-01-01T00:00:10")
    assert d.missed == () and d.more_missed == 0 and d.expired is None
    assert d.next_fire_at == at("2026-01-01T00:00:12")


def test_late_tick_starts_only_the_latest_due_fire() -> None:
    timing = every_two_seconds()
    d = decide(timing, due_at=at("2026-01-01T00:00:10"), now=at("2026-01-01T00:00:15"))
    assert d.fire == at("2026-01-01T00:00:14")
    assert d.missed == (at("2026-01-01T00:00:10"), at("2026-01-01T00:00:12"))
    assert d.next_fire_at == at("2026-01-01T00:00:16")


def test_outage_longer_than_grace_starts_nothing_and_moves_on() -> None:
    timing = Timing(parse_cron("0 0 * * * *"), UTC_ZONE, misfire_grace=timedelta(minutes=30))
    d = decide(timing, due_at=at("2026-01-01T03:00:00"), now=at("2026-01-01T05:45:00"))
    assert d.fire is None
    assert d.expired == at("2026-01-01T05:00:00")
    assert d.missed == (at("2026-01-01T03:00:00"), at("2026-01-01T04:00:00"))
    assert d.next_fire_at == at("2026-01-01T06:00:00")


def test_outage_within_grace_fires_once_for_the_latest_missed_time() -> None:
    timing = Timing(parse_cron("0 0 * * * *"), UTC_ZONE, misfire_grace=timedelta(hours=1))
    d = decide(timing, due_at=at("2026-01-01T03:00:00"), now=at("2026-01-01T05:45:00"))
    assert d.fire == at("2026-01-01T05:00:00")
    assert len(d.missed) == 2


def test_long_outage_lists_a_bounded_number_of_misses() -> None:
    timing = Timing(parse_cron("* * * * * *"), UTC_ZONE, misfire_grace=timedelta(0))
    d = decide(timing, due_at=at("2026-01-01T00:00:00"), now=at("2026-01-01T01:00:00"))
    assert d.fire == at("2026-01-01T01:00:00")
    assert len(d.missed) == 100
    assert d.more_missed == 3600 - 100


def test_window_bounds_fires() -> None:
    timing = every_two_seconds(
        from_date=at("2026-01-01T00:01:00"), to_date=at("2026-01-01T00:01:06")
    )
    assert first_fire(timing, at("2026-01-01T00:00:00")) == at("2026-01-01T00:01:00")
    assert first_fire(timing, at("2026-01-01T00:01:03")) == at("2026-01-01T00:01:04")
    assert first_fire(timing, at("2026-01-01T00:01:04")) is None  # toDate is exclusive
    d = decide(timing, due_at=at("2026-01-01T00:01:04"), now=at("2026-01-01T00:01:09"))
    assert d.fire == at("2026-01-01T00:01:04")
    assert d.next_fire_at is None


def test_due_time_not_yet_reached_in_spec_zone_starts_nothing() -> None:
    timing = Timing(parse_cron("0 30 2 * * *"), ZoneInfo("Europe/Berlin"))
    d = decide(timing, due_at=at("2026-01-02T01:30:00"), now=at("2026-01-02T01:29:59"))
    assert d.fire is None and d.missed == () and d.expired is None
    assert d.next_fire_at == at("2026-01-02T01:30:00")


# -- jitterSeconds: a fixed offset per spec ----------------------------------------------------


def test_the_jitter_offset_is_fixed_by_the_name_and_within_the_window() -> None:
    assert jitter_offset("db1", 0) == timedelta(0)
    offsets = {jitter_offset(f"spec-{i}", 59) for i in range(2000)}
    assert offsets == {timedelta(seconds=s) for s in range(60)}  # every second is reachable
    # A pinned value: the offset must not change between releases (nextFireTime would move).
    assert jitter_offset("nightly-db", 3600) == timedelta(seconds=3064)


def test_an_offset_shifts_fires_and_decisions_alike() -> None:
    timing = Timing(parse_cron("0 0 23 * * *"), UTC_ZONE, offset=timedelta(seconds=90))
    assert first_fire(timing, at("2026-01-01T22:00:00")) == at("2026-01-01T23:01:30")
    # The cron time itself is not due any more; the shifted one is, with its grace.
    early = decide(timing, due_at=at("2026-01-01T23:01:30"), now=at("2026-01-01T23:00:30"))
    assert early.fire is None
    due = decide(timing, due_at=at("2026-01-01T23:01:30"), now=at("2026-01-01T23:01:31"))
    assert due.fire == at("2026-01-01T23:01:30")
    assert due.next_fire_at == at("2026-01-02T23:01:30")


def test_an_offset_is_elapsed_time_across_a_dst_change() -> None:
    # Berlin's clocks go forward at 02:00 on 2026-03-29: 01:59:30 + 60 s is 03:00:30 local.
    berlin = ZoneInfo("Europe/Berlin")
    timing = Timing(parse_cron("30 59 1 * * *"), berlin, offset=timedelta(seconds=60))
    fire = first_fire(timing, datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert fire == datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC) + timedelta(seconds=60)
    assert fire is not None and fire.astimezone(berlin).hour == 3


def test_a_window_bounds_the_shifted_fire_times() -> None:
    timing = Timing(
        parse_cron("0 0 * * * *"),
        UTC_ZONE,
        from_date=at("2026-01-01T10:00:30"),
        to_date=at("2026-01-01T12:00:30"),
        offset=timedelta(seconds=45),
    )
    assert first_fire(timing, at("2026-01-01T09:00:00")) == at("2026-01-01T10:00:45")
    assert first_fire(timing, at("2026-01-01T11:30:00")) is None  # 12:00:45 is past toDate
