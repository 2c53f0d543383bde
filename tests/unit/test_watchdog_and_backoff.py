"""Small pure pieces of the scheduler: the stall detector and the removal backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backtor.removal import backoff
from backtor.watchdog import STALL, StallDetector

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_beating_tick_never_stalls() -> None:
    detector = StallDetector()
    for second in range(0, 600, 10):
        now = T0 + timedelta(seconds=second)
        assert not detector.stalled("tick-1", now - timedelta(seconds=1), now)


def test_a_silent_tick_stalls_after_the_stall_time() -> None:
    detector = StallDetector()
    beat = T0
    assert not detector.stalled("tick-1", beat, T0)
    assert not detector.stalled("tick-1", beat, T0 + STALL)
    assert detector.stalled("tick-1", beat, T0 + STALL + timedelta(seconds=1))


def test_a_new_tick_starts_a_new_watch() -> None:
    detector = StallDetector()
    assert not detector.stalled("tick-1", None, T0)
    assert not detector.stalled("tick-2", None, T0 + STALL * 2)
    assert detector.stalled("tick-2", None, T0 + STALL * 3 + timedelta(seconds=1))


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert backoff(20) == timedelta(hours=1)
    assert backoff(1, base_seconds=1) == timedelta(seconds=1)
    assert backoff(3, base_seconds=1) == timedelta(seconds=4)
