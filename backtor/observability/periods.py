"""The expected period of a schedule, for `backtor_backup_expected_period_seconds`.

Alert rules call a backup missing when none succeeded for longer than this period (times a
margin); the figure is computed here, cached, because it takes a few milliseconds per cron.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
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


# How far around now the zone's offset changes are looked for: a schedule that fires at
# least once a year has every gap the period looks at inside it.
SHIFT_SPAN = timedelta(days=400)
_HOUR = timedelta(hours=1)
_DAY_SECONDS = 86_400


def daily_time(expression: str) -> tuple[int, str] | None:
    """A cron with one fixed time of day (single second, minute and hour): that time, in
    seconds after midnight, and the same cron at midnight. None for any other cron."""
    fields = expression.split()
    if len(fields) != 6 or not all(field.isdigit() for field in fields[:3]):
        return None
    second, minute, hour = (int(field) for field in fields[:3])
    return hour * 3600 + minute * 60 + second, " ".join(("0", "0", "0", *fields[3:]))


def shift_windows(tz: ZoneInfo, around: datetime) -> tuple[tuple[int, int], ...]:
    """The times of day (seconds after local midnight, [start, end)) that an offset change
    of the zone in SHIFT_SPAN around `around` skips or repeats, a second wider each side."""
    windows: set[tuple[int, int]] = set()
    moment = around.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - SHIFT_SPAN
    before = moment.astimezone(tz).utcoffset()
    while moment < around + SHIFT_SPAN:
        after = (moment + _HOUR).astimezone(tz).utcoffset()
        if after != before and before is not None and after is not None:
            change = _change_within(tz, moment, before)
            ends = sorted(_second_of_day(change + offset) for offset in (before, after))
            start, end = ends[0] - 1, ends[1] + 1
            if end - start > _DAY_SECONDS // 2:  # the skipped or repeated span crosses midnight
                windows.update(((0, start + 2), (end - 2, _DAY_SECONDS)))
            else:
                windows.add((max(start, 0), min(end, _DAY_SECONDS)))
        before = after
        moment += _HOUR
    return tuple(sorted(windows))


def _change_within(tz: ZoneInfo, moment: datetime, before: timedelta) -> datetime:
    """The first second in (moment, moment + 1 h] whose offset is no longer `before`."""
    low, high = 0, 3600  # low: still `before`; high: changed
    while high - low > 1:
        middle = (low + high) // 2
        instant = moment + timedelta(seconds=middle)
        if instant.astimezone(tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return moment + timedelta(seconds=high)


def _second_of_day(wall: datetime) -> int:
    return wall.hour * 3600 + wall.minute * 60 + wall.second


def period_class(
    expression: str, zone: str, windows: tuple[tuple[int, int], ...]
) -> tuple[str, str, object]:
    """The cache key of a schedule: schedules with the same key have the same expected
    period, so a fleet of daily crons spread over the day shares a handful of entries.

    A cron firing once a day at time t fires on the same days whatever t is. Where t is no
    hour near an offset change (`windows`), each fire exists once and the gaps between
    them are whole days, give or take the changes between them; which changes fall
    between two fires depends on t only through which side of each change's time of day
    t is on. So the midnight cron and the window-free stretch of the day t falls in
    decide the period; a t inside a window is its own class.
    """
    daily = daily_time(expression)
    if daily is None:
        return expression, zone, None
    moment, midnight = daily
    if any(start <= moment < end for start, end in windows):
        return expression, zone, None
    return midnight, zone, sum(1 for start, _ in windows if start <= moment)


class PeriodCache:
    """Expected periods per (cron, zone), computed once in a while; a scrape gets a budget.

    Up to tens of milliseconds per schedule, so schedules share entries by class
    (period_class: 100,000 daily crons spread over the day make a few dozen), and with
    thousands of classes the first scrapes fill the cache over several rounds (a spec
    without its period yet is left out of backtor_backup_expected_period_seconds until
    then) instead of timing out.
    """

    def __init__(self, ttl_seconds: float = 6 * 3600, max_entries: int = 50_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str, object], tuple[float | None, float]] = {}
        self._zones: dict[str, tuple[tuple[tuple[int, int], ...], float]] = {}
        self._lock = threading.Lock()

    def get(self, cron: str, zone: str, now: datetime, deadline: float) -> float | None:
        clock = time.monotonic()
        try:
            key = period_class(cron, zone, self._windows(zone, now, clock))
        except (KeyError, ValueError) as exc:  # a zone this system does not know
            log.warning("no expected period for cron %r in %s: %s", cron, zone, exc)
            return None
        entry = self._entries.get(key)
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
                # The oldest entries go (dicts keep insertion order), not all of them: a
                # cache cleared whole at the limit would never hold a large fleet.
                for old in list(self._entries)[: self.max_entries // 10 or 1]:
                    del self._entries[old]
            self._entries.pop(key, None)
            self._entries[key] = (period, clock)
        return period

    def windows(self, zone: str, now: datetime) -> tuple[tuple[int, int], ...]:
        """The zone's shift windows as period_class sees them (none for an unknown zone),
        so the database can key schedules by class the same way."""
        try:
            return self._windows(zone, now, time.monotonic())
        except (KeyError, ValueError):
            return ()

    def _windows(self, zone: str, now: datetime, clock: float) -> tuple[tuple[int, int], ...]:
        found = self._zones.get(zone)
        if found is not None and clock - found[1] < self.ttl:
            return found[0]
        windows = shift_windows(ZoneInfo(zone), now)
        with self._lock:
            self._zones[zone] = (windows, clock)
        return windows
