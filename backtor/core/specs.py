"""Validation and normalisation of backup specifications, as plain functions.

The API checks the shape of a request (types, unknown fields); everything that needs the
domain (names, dates, zones, cron, retention) is checked here, so the rules live in one
place and any caller (API, CLI, tests) gets the same answer. Errors name the API field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from backtor.core.cron import CronError, CronSchedule, parse_cron
from backtor.core.errors import InvalidField
from backtor.core.policy import FIELD_BY_TIER, PolicyError, RetentionPolicy, derive_cron
from backtor.core.schedule import Timing, first_fire

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME_RE = re.compile(NAME_PATTERN, re.ASCII)
MAX_INT32 = 2**31 - 1  # the columns are 32-bit integers on PostgreSQL
MAX_CRON_CHARS = 256
MAX_TIMEZONE_CHARS = 64
MAX_DATE_CHARS = 64
MAX_WORKER_CONFIG_CHARS = 65_536  # it travels in every workflow's input
DEFAULT_TIMEZONE = "UTC"
DEFAULT_MISFIRE_GRACE_SECONDS = 3600
# A pass runs some time after a due time: up to one tick interval (the tick holds its task
# <= 3 s and calls back after <= 15 s today, <= ~5 s once shortened for failover) plus the
# pass itself. A grace below that loses fires (0: every fire). 10 s is twice the shortened
# interval; docs/scheduling.md, "Grace rules".
MIN_MISFIRE_GRACE_SECONDS = 10
RETENTION_FIELDS: tuple[str, ...] = tuple(FIELD_BY_TIER.values())


class SpecError(InvalidField):
    """An invalid spec field: `field` is its camelCase API name, `message` says which rule."""


@dataclass(frozen=True)
class SpecDraft:
    """A request's fields, type-checked but not yet validated; None means "not given"."""

    name: str
    enabled: bool | None = None
    from_date: str | None = None
    to_date: str | None = None
    backup_cron_string: str | None = None
    timezone: str | None = None
    worker_config: str | None = None
    timeout_seconds: int | None = None
    misfire_grace_seconds: int | None = None
    retention: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecValues:
    """A complete, valid specification: every default applied, every string canonical."""

    name: str
    enabled: bool
    from_date: datetime | None
    to_date: datetime | None
    cron_string: str
    cron_derived: bool
    timezone: str
    worker_config: str | None
    timeout_seconds: int | None
    misfire_grace_seconds: int
    retention: Mapping[str, str]  # camelCase field -> canonical "N@R"


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise SpecError(
            "name",
            "name must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def parse_instant(field_name: str, text: str) -> datetime:
    """An ISO-8601 date-time with an offset or Z, as aware UTC."""
    rule = f"{field_name} must be an ISO-8601 date-time with an offset or Z"
    if len(text) > MAX_DATE_CHARS:
        raise SpecError(field_name, f"{rule}; the value is too long")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(field_name, f"{rule}, e.g. 2024-05-01T00:00:00Z") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise SpecError(field_name, f"{rule}; {text!r} has no offset")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise SpecError(field_name, f"{field_name} is out of range") from None


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def validate_timezone(name: str) -> ZoneInfo:
    rule = "timezone must be an IANA time zone name such as 'UTC' or 'Europe/Berlin'"
    known = _known_zones()
    if len(name) > MAX_TIMEZONE_CHARS or (known and name not in known):
        raise SpecError("timezone", f"{rule}; {name[:MAX_TIMEZONE_CHARS]!r} is not one")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise SpecError("timezone", f"{rule}; {name!r} is not one") from None


def parse_retention(values: Mapping[str, str | None]) -> RetentionPolicy:
    try:
        return RetentionPolicy.from_fields(values)
    except PolicyError as error:
        raise SpecError(error.field, error.message) from None


def normalise_cron(text: str) -> str:
    """The canonical six-field form of a user's cron expression."""
    if len(text) > MAX_CRON_CHARS:
        raise SpecError("backupCronString", f"backupCronString is longer than {MAX_CRON_CHARS}")
    try:
        expression = parse_cron(text).expression
    except CronError as error:
        raise SpecError("backupCronString", f"backupCronString: {error}") from None
    if len(expression) > MAX_CRON_CHARS:
        raise SpecError("backupCronString", f"backupCronString is longer than {MAX_CRON_CHARS}")
    return expression


def _check_int(field_name: str, value: int, low: int, rule: str) -> int:
    if not low <= value <= MAX_INT32:
        raise SpecError(field_name, f"{field_name} must be an integer {rule} (at most {MAX_INT32})")
    return value


def _check_worker_config(value: str) -> str:
    if len(value) > MAX_WORKER_CONFIG_CHARS:
        raise SpecError(
            "workerConfig", f"workerConfig is longer than {MAX_WORKER_CONFIG_CHARS} characters"
        )
    if "\x00" in value:
        raise SpecError("workerConfig", "workerConfig must not contain NUL characters")
    return value


def normalise_spec(draft: SpecDraft) -> SpecValues:
    """Apply every rule and every default; raise SpecError naming the first bad field.

    Omitted optional fields take their defaults, so the result is a full replacement.
    """
    name = validate_name(draft.name)
    from_date = None if draft.from_date is None else parse_instant("fromDate", draft.from_date)
    to_date = None if draft.to_date is None else parse_instant("toDate", draft.to_date)
    if from_date is not None and to_date is not None and to_date <= from_date:
        raise SpecError("toDate", "toDate must be later than fromDate")
    timezone = DEFAULT_TIMEZONE if draft.timezone is None else draft.timezone
    validate_timezone(timezone)
    policy = parse_retention(draft.retention)
    cron_text = draft.backup_cron_string
    derived = cron_text is None or not cron_text.strip()
    cron_string = normalise_cron(derive_cron(policy) if derived else str(cron_text))
    timeout = draft.timeout_seconds
    if timeout is not None:
        _check_int("timeoutSeconds", timeout, 1, "greater than 0")
    grace = draft.misfire_grace_seconds
    grace = DEFAULT_MISFIRE_GRACE_SECONDS if grace is None else grace
    _check_int(
        "misfireGraceSeconds",
        grace,
        MIN_MISFIRE_GRACE_SECONDS,
        f"of at least {MIN_MISFIRE_GRACE_SECONDS} (a scheduler pass may start that late)",
    )
    worker_config = draft.worker_config
    if worker_config is not None:
        _check_worker_config(worker_config)
    return SpecValues(
        name=name,
        enabled=True if draft.enabled is None else draft.enabled,
        from_date=from_date,
        to_date=to_date,
        cron_string=cron_string,
        cron_derived=derived,
        timezone=timezone,
        worker_config=worker_config,
        timeout_seconds=timeout,
        misfire_grace_seconds=grace,
        retention=policy.to_fields(),
    )


def compute_next_fire_at(
    *,
    cron_string: str,
    timezone: str,
    enabled: bool,
    from_date: datetime | None,
    to_date: datetime | None,
    now: datetime,
) -> datetime | None:
    """The next fire after `now` inside the window [fromDate, toDate), or None.

    None when the spec is disabled or no fire remains before toDate; a fire exactly at
    fromDate counts, one exactly at toDate does not.
    """
    if not enabled:
        return None
    timing = Timing(CronSchedule(cron_string), ZoneInfo(timezone), from_date, to_date)
    try:
        return first_fire(timing, now)
    except (CronError, OverflowError):
        return None  # nothing fires any more before the end of the calendar
