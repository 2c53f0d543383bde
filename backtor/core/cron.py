"""Cron schedules, seconds first, evaluated on the wall clock of a time zone.

croniter does the calendar arithmetic on naive wall-clock times; this module maps
those times to instants itself, so the DST rules are ours and written down:

* a wall-clock time that does not exist (spring-forward gap) fires at the end of
  the gap, the first instant that exists (02:30 in Berlin fires at 03:00 CEST);
  several times in one gap fire once, together;
* a wall-clock time that exists twice (fall-back) fires once, at its first
  occurrence; nothing fires during the repeated stretch a second time.
"""

from __future__ import annotations

import itertools
import re
import statistics
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from backtor.core.errors import BacktorError

FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_HINTS = (
    "0-59",
    "0-59",
    "0-23",
    "1-31, L, nW or ?",
    "1-12 or JAN-DEC",
    "0-7 or SUN-SAT, n#k, Ln or ?",
)
# croniter's hashed (H) and random (R) fields need a seed or are not reproducible.
_HASH_OR_RANDOM = re.compile(r"[HR](\([0-9]+-[0-9]+\))?(/[0-9]+)?")
_ONE_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)
# A schedule that fires at all fires within this many years (leap days, 5th weekdays).
_HORIZON_YEARS = 50


class CronError(BacktorError, ValueError):
    """A cron expression that is malformed, out of range or never fires.

    It names no field (a cron may come from a spec, a setting or the database); callers
    that know the field raise InvalidField with it (backtor.core.specs).
    """


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression: six fields, seconds first, single spaces, upper case.

    Build it with :func:`parse_cron`; constructing it directly validates too, so a
    stored expression read back from the database is checked the same way.
    """

    expression: str

    def __post_init__(self) -> None:
        _engine(self.expression)


def _probe(fields: list[str]) -> croniter:
    return croniter(
        " ".join(fields),
        datetime(2000, 1, 1),
        ret_type=datetime,
        second_at_beginning=True,
        max_years_between_matches=_HORIZON_YEARS,
    )


def _check_fields(fields: list[str], text: str) -> None:
    """Validate field by field so the message names the field that is wrong."""
    for index, value in enumerate(fields):
        if _HASH_OR_RANDOM.fullmatch(value):
            raise CronError(
                f"cron {FIELD_NAMES[index]} field {value!r} uses H/R (hashed or random), "
                f"which is not supported, in {text!r}"
            )
        probe = ["*"] * 6
        probe[index] = value
        try:
            _probe(probe)
        except (CroniterError, ValueError, TypeError, KeyError, IndexError) as error:
            raise CronError(
                f"cron {FIELD_NAMES[index]} field {value!r} is invalid (allowed: "
                f"{_FIELD_HINTS[index]}) in {text!r}"
            ) from error


class _Engine:
    """A compiled croniter; one per expression, shared, so parse cost is paid once."""

    def __init__(self, expression: str) -> None:
        self._iter = _probe(expression.split(" "))
        self._lock = threading.Lock()

    def next_after(self, moment: datetime) -> datetime:
        with self._lock:
            result: datetime = self._iter.get_next(datetime, moment)
        return result

    def prev_before(self, moment: datetime) -> datetime:
        with self._lock:
            result: datetime = self._iter.get_prev(datetime, moment)
        return result


@lru_cache(maxsize=4096)
def _engine(expression: str) -> _Engine:
    fields = expression.split(" ")
    if len(fields) != 6 or any(f == "" or f != f.upper() for f in fields):
        raise CronError(
            f"{expression!r} is not a normalised cron expression "
            "(six upper-case fields separated by single spaces); use parse_cron"
        )
    _check_fields(fields, expression)
    try:
        engine = _Engine(expression)
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as error:
        raise CronError(f"cron expression {expression!r} is invalid: {error}") from error
    try:
        engine.next_after(datetime(2000, 1, 1))
    except CroniterBadDateError:
        raise CronError(
            f"cron expression {expression!r} never fires (no matching date within "
            f"{_HORIZON_YEARS} years, e.g. February 30)"
        ) from None
    return engine


def parse_cron(text: str) -> CronSchedule:
    """Validate and normalise: six fields seconds first, or five (then second = 0)."""
    if not isinstance(text, str):
        raise CronError(f"a cron expression must be a string, not {type(text).__name__}")
    fields = text.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise CronError(
            f"a cron expression has 6 fields (second minute hour day-of-month month "
            f"day-of-week) or 5 (minute first); {text!r} has {len(text.split())}"
        )
    if not all(f.isascii() and f.isprintable() for f in fields):
        raise CronError(f"cron expression {text!r} contains non-ASCII characters")
    return CronSchedule(" ".join(f.upper() for f in fields))


# --- wall clock <-> instants ------------------------------------------------------


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")


def _offset(instant: datetime, tz: tzinfo) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def _gap_end(wall: datetime, tz: tzinfo, before: timedelta, after: timedelta) -> datetime:
    """The first existing instant after the spring-forward gap that contains ``wall``."""
    # The gap is [T + before, T + after) in wall time, so T lies in (wall - after, wall - before].
    low = (wall - after).replace(tzinfo=UTC)
    high = (wall - before).replace(tzinfo=UTC)
    # Transitions fall on whole seconds; bisect for the first second with the new offset.
    while high - low > _ONE_SECOND:
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle <= low:
            middle = low + _ONE_SECOND
        if _offset(middle, tz) == after:
            high = middle
        else:
            low = middle
    return high


def _resolve(wall: datetime, tz: tzinfo) -> datetime:
    """The instant (UTC) a scheduled naive wall-clock time fires at, per the DST rules."""
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    assert first is not None and second is not None
    if first >= second:  # unambiguous, or ambiguous: fold=0 is the first occurrence
        return (wall - first).replace(tzinfo=UTC)
    return _gap_end(wall, tz, first, second)


def _wall(moment: datetime, tz: tzinfo) -> datetime:
    return moment.astimezone(tz).replace(tzinfo=None, fold=0)


def _fires_after(schedule: CronSchedule, after: datetime, tz: tzinfo) -> Iterator[datetime]:
    """Fire instants strictly after ``after``, increasing, each once."""
    engine = _engine(schedule.expression)
    # Resolution is monotone in wall time and resolve(wall(after)) <= after, so no
    # wall time at or before wall(after) can fire after it: start the search there.
    wall = _wall(after, tz)
    last = after
    while True:
        try:
            wall = engine.next_after(wall)
        except CroniterBadDateError:
            return
        instant = _resolve(wall, tz)
        if instant > last:
            last = instant
            yield instant


def next_fire(schedule: CronSchedule, after: datetime, tz: ZoneInfo) -> datetime:
    """The first fire strictly after ``after``, as an aware UTC datetime."""
    _require_aware(after, "after")
    for instant in _fires_after(schedule, after, tz):
        return instant
    raise CronError(f"cron expression {schedule.expression!r} does not fire after {after}")


def latest_fire_at_or_before(
    schedule: CronSchedule, moment: datetime, tz: ZoneInfo
) -> datetime | None:
    """The latest fire at or before ``moment`` (for misfire handling), or None."""
    _require_aware(moment, "moment")
    engine = _engine(schedule.expression)
    latest = _latest_wall_at_or_before(moment, tz)
    try:
        wall = engine.prev_before(latest + _ONE_SECOND)  # get_prev is exclusive
    except CroniterBadDateError:
        return None
    return _resolve(wall, tz)


def _latest_wall_at_or_before(moment: datetime, tz: tzinfo) -> datetime:
    """The latest whole-second wall-clock time that fires at or before ``moment``.

    Bisected, not walked fire by fire: within a day of a DST change the candidates span
    up to the shift (an hour), which a per-second cron would otherwise step through one
    croniter call at a time. ``_resolve`` is monotone in wall time, so bisection is exact.
    """
    here = _offset(moment, tz)
    highest = max(here, _offset(moment - _DAY, tz), _offset(moment + _DAY, tz))
    # wall(moment) fires at or before moment (its first occurrence, if repeated); every
    # wall time later than wall(moment) + (highest - here) fires after moment.
    low = _wall(moment, tz).replace(microsecond=0)
    high = low + (highest - here) + _ONE_SECOND
    while high - low > _ONE_SECOND:
        middle = low + (high - low) // _ONE_SECOND // 2 * _ONE_SECOND
        if _resolve(middle, tz) <= moment:
            low = middle
        else:
            high = middle
    return low


def nominal_period_seconds(schedule: CronSchedule, tz: ZoneInfo, around: datetime) -> float:
    """Median gap between consecutive fires near ``around``, ignoring DST-shortened gaps."""
    _require_aware(around, "around")
    start = latest_fire_at_or_before(schedule, around, tz) or around
    fires = [start]
    for instant in _fires_after(schedule, start, tz):
        fires.append(instant)
        if len(fires) == 6:
            break
    if len(fires) < 2:
        raise CronError(f"cron expression {schedule.expression!r} does not fire near {around}")
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
    return float(statistics.median(gaps))
