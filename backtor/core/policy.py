"""Retention policy syntax: six tier rules of the form ``N@R``, parsed once at the edge.

The API carries one camelCase string field per tier; everything past this module
works with validated :class:`TierRule` values and never sees the strings again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from backtor.core.errors import InvalidField

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo


class Tier(StrEnum):
    """Retention tiers, finest first; the value is the name used in tags and reasons."""

    MINUTELY = "minutely"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


FIELD_BY_TIER: Mapping[Tier, str] = MappingProxyType(
    {
        Tier.MINUTELY: "retentionMinutely",
        Tier.HOURLY: "retentionHourly",
        Tier.DAILY: "retentionDaily",
        Tier.WEEKLY: "retentionWeekly",
        Tier.MONTHLY: "retentionMonthly",
        Tier.YEARLY: "retentionYearly",
    }
)
TIER_BY_FIELD: Mapping[str, Tier] = MappingProxyType({f: t for t, f in FIELD_BY_TIER.items()})

MAX_COUNT = 100_000
WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@dataclass(frozen=True)
class Unit:
    """What a tier's reference R measures, so parsing and messages share one table."""

    name: str
    low: int
    high: int
    last: int | None  # the value L stands for, when it is fixed
    extra: str = ""  # other accepted spellings, for messages


UNIT_BY_TIER: Mapping[Tier, Unit] = MappingProxyType(
    {
        Tier.MINUTELY: Unit("second", 0, 59, 59),
        Tier.HOURLY: Unit("minute", 0, 59, 59),
        Tier.DAILY: Unit("hour", 0, 23, 23),
        Tier.WEEKLY: Unit("weekday", 0, 6, 6, " (0 = Sunday), SUN..SAT"),
        Tier.MONTHLY: Unit("day of the month", 1, 31, None),  # L: the month's last day
        Tier.YEARLY: Unit("month", 1, 12, 12),
    }
)

_RULE_RE = re.compile(r"([0-9]+)(?:@([0-9]+|[A-Za-z]+))?", re.ASCII)


class PolicyError(InvalidField):
    """A retention field that cannot be parsed; ``field`` is the camelCase API field."""


@dataclass(frozen=True)
class TierRule:
    """Keep ``count`` representatives; ``reference`` is the preferred unit value, None = L."""

    count: int
    reference: int | None


DEFAULT_RULES: Mapping[Tier, TierRule] = MappingProxyType(
    {
        Tier.MINUTELY: TierRule(0, None),
        Tier.HOURLY: TierRule(0, None),
        Tier.DAILY: TierRule(4, None),
        Tier.WEEKLY: TierRule(4, None),
        Tier.MONTHLY: TierRule(3, None),
        Tier.YEARLY: TierRule(2, None),
    }
)


def _rule_error(tier: Tier, text: object, why: str) -> PolicyError:
    unit = UNIT_BY_TIER[tier]
    name = FIELD_BY_TIER[tier]
    return PolicyError(
        name,
        f"{name} must be 'N', 'N@R' or empty, with N an integer 0..{MAX_COUNT} and R the "
        f"{unit.name}, {unit.low}-{unit.high}{unit.extra} or L; {why} in {text!r}",
    )


def _check_rule(tier: Tier, rule: TierRule, text: str) -> TierRule:
    if not 0 <= rule.count <= MAX_COUNT:
        raise _rule_error(tier, text, f"N={rule.count} is out of range")
    unit = UNIT_BY_TIER[tier]
    if rule.reference is not None and not unit.low <= rule.reference <= unit.high:
        raise _rule_error(tier, text, f"R={rule.reference} is out of range")
    return rule


def _parse_reference(tier: Tier, token: str, text: str) -> int | None:
    upper = token.upper()
    if upper == "L":
        return None
    if token.isdigit():
        return int(token)
    if tier is Tier.WEEKLY and upper in WEEKDAY_NAMES:
        return WEEKDAY_NAMES.index(upper)
    raise _rule_error(tier, text, f"R={token!r} is not a number or L")


def parse_rule(tier: Tier, text: object) -> TierRule:
    """Parse one tier's rule; None or blank means the tier's default."""
    if text is None:
        return DEFAULT_RULES[tier]
    if not isinstance(text, str):
        raise _rule_error(tier, text, "the value is not a string")
    stripped = text.strip()
    if not stripped:
        return DEFAULT_RULES[tier]
    match = _RULE_RE.fullmatch(stripped)
    if match is None:
        raise _rule_error(tier, text, "the syntax is wrong")
    count_text, reference_text = match.groups()
    reference = None if reference_text is None else _parse_reference(tier, reference_text, text)
    return _check_rule(tier, TierRule(int(count_text), reference), text)


def format_rule(tier: Tier, rule: TierRule) -> str:
    """Canonical ``N@R`` text: R as a number (weekday as a digit) or L."""
    del tier  # every tier formats alike; kept for symmetry with parse_rule
    reference = "L" if rule.reference is None else str(rule.reference)
    return f"{rule.count}@{reference}"


KEEP_WITHIN_FIELD = "retentionKeepWithin"
LAST_FIELD = "retentionLast"
MAX_DURATION_DIGITS = 9  # per unit; a window reaching past year 1 simply holds everything
_DURATION_RE = re.compile(
    r"(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", re.ASCII
)
_DURATION_UNITS = ("w", "d", "h", "m", "s")


@dataclass(frozen=True)
class KeepWithin:
    """A keep-within duration: weeks and days on the zone's calendar, the rest elapsed.

    "1d" before 12:00 on the day after a spring-forward change is 12:00 the day before,
    23 hours earlier; "24h" is 24 hours earlier (docs/retention.md, "Keep within").
    """

    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        if min(self.weeks, self.days, self.hours, self.minutes, self.seconds) < 0:
            raise _within_error(self.text, "a part is negative")

    @property
    def text(self) -> str:
        parts = (self.weeks, self.days, self.hours, self.minutes, self.seconds)
        return "".join(f"{n}{u}" for n, u in zip(parts, _DURATION_UNITS, strict=True) if n)

    def cutoff(self, newest: datetime, tz: ZoneInfo) -> datetime:
        """The earliest time kept: calendar days back on the local wall clock, then elapsed.

        A wall time that does not exist (a spring-forward gap) or exists twice (fall-back)
        is read with fold=0, the offset before the change.
        """
        local = newest.astimezone(tz).replace(tzinfo=None)
        shifted = (local - timedelta(days=self.weeks * 7 + self.days)).replace(tzinfo=tz)
        elapsed = timedelta(hours=self.hours, minutes=self.minutes, seconds=self.seconds)
        return shifted.astimezone(UTC) - elapsed


def _within_error(text: object, why: str) -> PolicyError:
    return PolicyError(
        KEEP_WITHIN_FIELD,
        f"{KEEP_WITHIN_FIELD} must be a duration such as '36h', '7d', '2w' or '1d12h' (units "
        f"w, d, h, m, s, largest first, at most {MAX_DURATION_DIGITS} digits each) or empty; "
        f"{why} in {text!r}",
    )


def parse_keep_within(text: object) -> KeepWithin | None:
    """Parse ``retentionKeepWithin``; None, blank or a zero duration means off."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise _within_error(text, "the value is not a string")
    stripped = text.strip().lower()
    if not stripped:
        return None
    match = _DURATION_RE.fullmatch(stripped)
    if match is None:
        raise _within_error(text, "the syntax is wrong")
    if any(len(group) > MAX_DURATION_DIGITS for group in match.groups() if group):
        raise _within_error(text, f"a number has more than {MAX_DURATION_DIGITS} digits")
    parts = [int(group or 0) for group in match.groups()]
    return KeepWithin(*parts) if any(parts) else None  # zero keeps nothing extra: off


def parse_last(value: object) -> int:
    """Parse ``retentionLast``: an integer 0..MAX_COUNT; None means 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise PolicyError(
            LAST_FIELD, f"{LAST_FIELD} must be an integer 0..{MAX_COUNT}; got {value!r}"
        )
    return value


@dataclass(frozen=True)
class RetentionPolicy:
    """One rule per tier, plus keep-within and keep-last; fields, so the policy is hashable."""

    minutely: TierRule = field(default=DEFAULT_RULES[Tier.MINUTELY])
    hourly: TierRule = field(default=DEFAULT_RULES[Tier.HOURLY])
    daily: TierRule = field(default=DEFAULT_RULES[Tier.DAILY])
    weekly: TierRule = field(default=DEFAULT_RULES[Tier.WEEKLY])
    monthly: TierRule = field(default=DEFAULT_RULES[Tier.MONTHLY])
    yearly: TierRule = field(default=DEFAULT_RULES[Tier.YEARLY])
    keep_within: KeepWithin | None = None
    keep_last: int = 0

    def __post_init__(self) -> None:
        # Rules built in code bypass parse_rule; hold them to the same ranges.
        for tier in Tier:
            rule = self.rule(tier)
            _check_rule(tier, rule, format_rule(tier, rule))
        parse_last(self.keep_last)

    def rule(self, tier: Tier) -> TierRule:
        rule: TierRule = getattr(self, tier.value)
        return rule

    @property
    def rules(self) -> Mapping[Tier, TierRule]:
        return MappingProxyType({tier: self.rule(tier) for tier in Tier})

    @property
    def keeps_only_newest(self) -> bool:
        """Nothing but the newest backup would ever be kept (pins aside)."""
        return (
            all(self.rule(tier).count == 0 for tier in Tier)
            and self.keep_within is None
            and self.keep_last <= 1
        )

    @property
    def keep_within_text(self) -> str:
        """Canonical ``retentionKeepWithin``; empty when off."""
        return "" if self.keep_within is None else self.keep_within.text

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> RetentionPolicy:
        """Build from API fields; missing, None or blank fields take their defaults."""
        for name in fields:
            if name not in TIER_BY_FIELD and name not in (KEEP_WITHIN_FIELD, LAST_FIELD):
                raise PolicyError(
                    str(name),
                    f"unknown retention field {name!r}; expected one of "
                    + ", ".join((*FIELD_BY_TIER.values(), KEEP_WITHIN_FIELD, LAST_FIELD)),
                )
        rules = {tier.value: parse_rule(tier, fields.get(FIELD_BY_TIER[tier])) for tier in Tier}
        return cls(
            **rules,
            keep_within=parse_keep_within(fields.get(KEEP_WITHIN_FIELD)),
            keep_last=parse_last(fields.get(LAST_FIELD)),
        )

    def to_fields(self) -> dict[str, str]:
        """The six tier fields, canonical (keep-within and keep-last have their own)."""
        return {FIELD_BY_TIER[tier]: format_rule(tier, self.rule(tier)) for tier in Tier}


DEFAULT_POLICY = RetentionPolicy()

# Days every month has at least, so "day R of month M" is certain to exist.
_SHORTEST_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _finest_kept_tier(policy: RetentionPolicy) -> Tier:
    for tier in Tier:
        if policy.rule(tier).count > 0:
            return tier
    return Tier.DAILY  # nothing is kept by any tier: fall back to one backup a day


def derive_cron(policy: RetentionPolicy) -> str:
    """Six-field cron (seconds first) that fires once per finest kept period at its R.

    The finest tier with N > 0 sets the frequency; the references of it and of the
    finer tiers set the firing time, so each backup lands where the retention plan
    prefers it. With every N = 0 the daily form is used (one backup a day).
    A day of the month the cron could skip is widened so every month still fires:
    the monthly form uses ``L`` for 31 and ``R,L`` for 29/30 (the plan treats an R
    beyond the month's length as its last day); the yearly form uses ``L`` when its
    month can be shorter than R (never "Feb 30", which would never fire).
    """
    finest = _finest_kept_tier(policy)
    order = list(Tier)
    depth = order.index(finest)

    def ref(tier: Tier) -> int | None:
        return policy.rule(tier).reference

    def fixed(tier: Tier) -> str:
        value = ref(tier)
        last = UNIT_BY_TIER[tier].last
        return str(last if value is None else value)

    second = fixed(Tier.MINUTELY)
    minute = fixed(Tier.HOURLY) if depth >= 1 else "*"
    hour = fixed(Tier.DAILY) if depth >= 2 else "*"
    weekday = fixed(Tier.WEEKLY) if finest is Tier.WEEKLY else "*"
    day = "*"
    month = "*"
    day_ref = ref(Tier.MONTHLY)
    if finest is Tier.MONTHLY:
        if day_ref is None or day_ref == 31:
            day = "L"
        elif day_ref > _SHORTEST_MONTH[1]:
            day = f"{day_ref},L"
        else:
            day = str(day_ref)
    elif finest is Tier.YEARLY:
        month_number = int(fixed(Tier.YEARLY))
        fits = day_ref is not None and day_ref <= _SHORTEST_MONTH[month_number - 1]
        day = str(day_ref) if fits else "L"
        month = str(month_number)
    return f"{second} {minute} {hour} {day} {month} {weekday}"
