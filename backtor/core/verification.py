"""Scheduled verification: which backups a verifyCronString fire verifies (docs/restore.md).

Pure: the scheduler (backtor.scheduling.verifications) hands in a spec's COMPLETED backups
and the fire; this says which of them to verify. Two rules:

* **the newest**: the newest COMPLETED backup, unless it was verified (any verdict) within
  the last period, i.e. since the cron's previous fire before this one, or a verification
  of it is under way;
* **the sample**: of the other COMPLETED backups (n of them), ceil(rate x n) per fire, at
  most MAX_SAMPLE_PER_FIRE, never verified first, then least recently verified, ties
  broken by a hash of the spec's name, the fire time and the backup's id (the same answer
  in every process, a different order at every fire). Those with a verification under way
  are passed over (so fewer may be picked).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from backtor.core.cron import CronError, CronSchedule
from backtor.core.schedule import Timing, jitter_offset

# Verifications a fire's sample starts at most: a pass starts them one by one, and a rate
# of 1 over thousands of kept backups must not hold a pass for minutes.
MAX_SAMPLE_PER_FIRE = 20
MIN_SAMPLE_RATE = 0.0
MAX_SAMPLE_RATE = 1.0


@dataclass(frozen=True)
class Candidate:
    """One COMPLETED backup of the spec."""

    backup_id: int
    scheduled_at: datetime
    last_verified_at: datetime | None
    verifying: bool = False  # a verification of it is STARTING or RUNNING


@dataclass(frozen=True)
class Choice:
    newest: int | None  # the newest backup, when it is to be verified
    sample: tuple[int, ...]  # older backups, in the order chosen

    @property
    def backup_ids(self) -> tuple[int, ...]:
        return ((self.newest,) if self.newest is not None else ()) + self.sample


def sample_size(rate: float, older: int) -> int:
    """ceil(rate x older), with the rate read as the decimal it was written as (0.3, not
    0.29999...), capped at MAX_SAMPLE_PER_FIRE."""
    if older <= 0 or rate <= 0:
        return 0
    exact = Fraction(repr(float(rate))) * older
    return min(math.ceil(exact), older, MAX_SAMPLE_PER_FIRE)


def _tiebreak(spec_name: str, fire: datetime, backup_id: int) -> bytes:
    return hashlib.sha256(f"{spec_name}\n{fire.isoformat()}\n{backup_id}".encode()).digest()


def choose(
    candidates: Iterable[Candidate],
    *,
    spec_name: str,
    fire: datetime,
    period_start: datetime | None,
    rate: float,
) -> Choice:
    """What the verifyCron fire at `fire` verifies among a spec's COMPLETED backups.

    `period_start`: the cron's previous fire before `fire` (None: there was none, and then
    any verdict counts as recent). `rate`: the sample rate, 0..1.
    """
    backups = sorted(candidates, key=lambda c: (c.scheduled_at, c.backup_id), reverse=True)
    if not backups:
        return Choice(None, ())
    newest, older = backups[0], backups[1:]
    recent = newest.last_verified_at is not None and (
        period_start is None or newest.last_verified_at >= period_start
    )
    chosen_newest = None if recent or newest.verifying else newest.backup_id
    wanted = sample_size(rate, len(older))

    def order(c: Candidate) -> tuple[Any, ...]:
        drawn = _tiebreak(spec_name, fire, c.backup_id)
        if c.last_verified_at is None:
            return (0, drawn)  # never verified: first, in the fire's drawn order
        return (1, c.last_verified_at, drawn)

    eligible = sorted((c for c in older if not c.verifying), key=order)
    return Choice(chosen_newest, tuple(c.backup_id for c in eligible[:wanted]))


# -- when: the verify cron's fire times ------------------------------------------------------


def verify_timing(name: str, cron_string: str, timezone: str, jitter_seconds: int) -> Timing:
    """The fire times of a stored verifyCronString: the spec's zone and jitter offset, no
    window (fromDate and toDate bound backups, not the checks of those kept)."""
    return Timing(
        CronSchedule(cron_string), ZoneInfo(timezone), offset=jitter_offset(name, jitter_seconds)
    )


def next_verify_after(
    *, name: str, cron_string: str | None, timezone: str, jitter_seconds: int, now: datetime
) -> datetime | None:
    """The first verifyCron fire strictly after `now`; None when there is no verify cron or
    it fires no more before the calendar ends."""
    if not cron_string:
        return None
    try:
        return verify_timing(name, cron_string, timezone, jitter_seconds).next_after(now)
    except (CronError, OverflowError):
        return None
