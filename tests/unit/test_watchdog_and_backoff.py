"""Small pure pieces of the scheduler: the stall rule and the removal backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backtor.scheduling.removals import backoff
from backtor.scheduling.watchdog import STALL, stalled

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_beating_tick_is_not_stalled() -> None:
    started = T0 - timedelta(hours=1)
    assert not stalled(T0 - STALL + timedelta(seconds=4), started, T0)


def test_a_silent_tick_is_stalled_after_the_stall_time() -> None:
    started = T0 - timedelta(hours=1)
    assert not stalled(T0 - STALL, started, T0)
    assert stalled(T0 - STALL - timedelta(seconds=1), started, T0)


def test_a_new_tick_gets_the_stall_time_to_beat_once() -> None:
    long_ago = T0 - timedelta(days=1)
    assert not stalled(long_ago, T0 - timedelta(seconds=5), T0)
    assert stalled(None, T0 - STALL - timedelta(seconds=1), T0)
    assert not stalled(None, None, T0)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert backoff(20) == timedelta(hours=1)
    assert backoff(1, base_seconds=1) == timedelta(seconds=1)
    assert backoff(3, base_seconds=1) == timedelta(seconds=4)
