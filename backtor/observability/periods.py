"""The expected period of a schedule, for `backtor_backup_expected_period_seconds`.

Alert rules call a backup missing when none succeeded for longer than this period (times a
margin); the figure is computed here, cached, because it takes a few milliseconds per cron.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from backtor.core.cron import CronError, CronSchedule, latest_fire_at_or_before, next_fire

log = logging.getLogger(__name__)

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
