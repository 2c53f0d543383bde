"""When a spec fires: pure decisions over a cron schedule, a window and a misfire grace.

No clock and no I/O: callers pass `now`. The scheduler stores each spec's next fire time in
an indexed column and asks `decide` only for specs whose time has come.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from backtor.core.cron import CronSchedule, latest_fire_at_or_before, next_fire

# Missed fires older than the latest one are listed (as skipped) up to this many per decision.
MAX_LISTED_MISSES = 100
# Beyond the listed ones, missed fire times are counted one by one up to this many, then
# estimated (the count feeds a metric, not a decision).
MAX_COUNTED_MISSES = 1_000
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Timing:
    """What decides a spec's fire times.

    `offset` (jitterSeconds, see jitter_offset) shifts every cron time by the same amount:
    a spec fires `offset` after each time its cron names.
    """

    schedule: CronSchedule
    tz: ZoneInfo
    from_date: datetime | None = None
    to_date: datetime | None = None
    misfire_grace: timedelta = timedelta(hours=1)
    offset: timedelta = timedelta(0)

    def next_after(self, moment: datetime) -> datetime:
        return next_fire(self.schedule, moment - self.offset, self.tz) + self.offset

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        latest = latest_fire_at_or_before(self.schedule, moment - self.offset, self.tz)
        return None if latest is None else latest + self.offset


def jitter_offset(name: str, jitter_seconds: int) -> timedelta:
    """A spec's fixed offset in [0, jitter_seconds]: a hash of its name, the same in every
    process and release, so thousands of specs on one cron spread over the jitter window
    and each one's schedule stays predictable (it shows in nextFireTime)."""
    if jitter_seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(name.encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % (jitter_seconds + 1))


@dataclass(frozen=True)
class Decision:
    """The outcome of one due check.

    `fire` is the single fire time to start now (or None); `missed` are earlier fire times
    passed over (listed up to MAX_LISTED_MISSES, `more_missed` counts the rest); `expired`
    is a latest fire that lay outside the grace window; `next_fire_at` is when to look again
    (None: no fire remains in the window).
    """

    fire: datetime | None
    missed: tuple[datetime, ...]
    more_missed: int
    expired: datetime | None
    next_fire_at: datetime | None


def first_fire(timing: Timing, now: datetime) -> datetime | None:
    """The first fire strictly after `now` in the window [fromDate, toDate), or None."""
    start = now
    if timing.from_date is not None and timing.from_date > now:
        # A fire exactly at fromDate belongs to the window.
        start = timing.from_date - _TICK
    candidate = timing.next_after(start)
    if timing.to_date is not None and candidate >= timing.to_date:
        return None
    return candidate


def decide(timing: Timing, due_at: datetime, now: datetime) -> Decision:
    """Decide what to start for a spec whose stored next fire time `due_at` has come.

    At most one fire starts, the latest one due, when it is within the misfire grace;
    earlier ones are missed, never caught up in a burst.
    """
    horizon = now if timing.to_date is None else min(now, timing.to_date - _TICK)
    latest = timing.latest_at_or_before(horizon)
    following = first_fire(timing, now)
    if latest is None or latest < due_at:
        return Decision(None, (), 0, None, following)
    missed, more = _between(timing, due_at, latest)
    if now - latest <= timing.misfire_grace:
        return Decision(latest, missed, more, None, following)
    return Decision(None, missed, more, latest, following)


def _between(timing: Timing, first: datetime, last: datetime) -> tuple[tuple[datetime, ...], int]:
    """Fire times in [first, last), the first MAX_LISTED_MISSES of them and how many more."""
    listed: list[datetime] = []
    moment = first
    while moment < last and len(listed) < MAX_LISTED_MISSES:
        listed.append(moment)
        moment = timing.next_after(moment)
    if moment >= last:
        return tuple(listed), 0
    more = 0
    counted_from = moment
    while moment < last and more < MAX_COUNTED_MISSES:
        more += 1
        moment = timing.next_after(moment)
    if moment < last:
        # A long outage: estimate the rest from the mean gap so far, instead of walking
        # (possibly millions of) fire times inside the caller's row lock.
        gap = (moment - counted_from) / more
        more += int((last - moment) / gap)
    return tuple(listed), more


class OverlapPolicy(StrEnum):
    """What a fire does while its spec's previous create_backup still runs (`overlapPolicy`).

    The API's names, in one place: the spec validation, the schema and the scheduler read
    them from here.
    """

    SKIP = "skip"  # recorded SKIPPED, reason `running` (the default)
    BUFFER_ONE = "bufferOne"  # one fire waits and starts once the run ends; more: skipped
    ALLOW = "allow"  # starts beside the running one
    TERMINATE_OTHER = "terminateOther"  # the running one is terminated, then this starts


DEFAULT_OVERLAP_POLICY = OverlapPolicy.SKIP
# How the reason given to a run terminated under terminateOther begins: such a run ended on
# purpose, it is no failed backup (no failure count, no notice).
TERMINATED_BY_OVERLAP = "terminated by overlapPolicy terminateOther"


class OverlapAction(StrEnum):
    START = "start"
    SKIP = "skip"
    BUFFER = "buffer"
    TERMINATE_AND_START = "terminate_and_start"


def on_overlap(
    policy: OverlapPolicy, *, buffer_free: bool, started_this_pass: bool = False
) -> OverlapAction:
    """What a fire does when its spec has a run open.

    `buffer_free`: no other fire of the spec waits already. `started_this_pass`: the open
    run is one this very pass is starting for another fire of the spec (a manual fire left
    to the scheduler beside a scheduled one); terminateOther never terminates that one, the
    fire is skipped as under `skip`.
    """
    if policy is OverlapPolicy.ALLOW:
        return OverlapAction.START
    if policy is OverlapPolicy.BUFFER_ONE:
        return OverlapAction.BUFFER if buffer_free else OverlapAction.SKIP
    if policy is OverlapPolicy.TERMINATE_OTHER and not started_this_pass:
        return OverlapAction.TERMINATE_AND_START
    return OverlapAction.SKIP
