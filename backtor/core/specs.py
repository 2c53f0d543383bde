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
from backtor.core.schedule import (
    DEFAULT_OVERLAP_POLICY,
    OverlapPolicy,
    Timing,
    first_fire,
    jitter_offset,
)
from backtor.core.verification import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME_RE = re.compile(NAME_PATTERN, re.ASCII)
MAX_INT32 = 2**31 - 1  # the columns are 32-bit integers on PostgreSQL
MAX_CRON_CHARS = 256
MAX_TIMEZONE_CHARS = 64
MAX_DATE_CHARS = 64
MAX_WORKER_CONFIG_CHARS = 65_536  # it travels in every workflow's input
MAX_PAUSED_REASON_CHARS = 500  # the column's length
DEFAULT_TIMEZONE = "UTC"
DEFAULT_MISFIRE_GRACE_SECONDS = 3600
# A pass runs some time after a due time: up to one tick interval (the tick holds its task
# <= 3 s and calls back after <= 15 s today, <= ~5 s once shortened for failover) plus the
# pass itself. A grace below that loses fires (0: every fire). 10 s is twice the shortened
# interval; docs/scheduling.md, "Grace rules".
MIN_MISFIRE_GRACE_SECONDS = 10
MAX_JITTER_SECONDS = 86_400
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
    retention: Mapping[str, object] = field(default_factory=dict)
    allow_keep_newest_only: bool | None = None
    paused_reason: str | None = None
    auto_pause_after_failures: int | None = None
    removal_delay_seconds: int | None = None
    overlap_policy: str | None = None
    notify_url: str | None = None
    jitter_seconds: int | None = None
    verify_cron_string: str | None = None
    verify_sample_rate: float | None = None


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
    retention: Mapping[str, str]  # camelCase tier field -> canonical "N@R"
    keep_within: str = ""  # canonical retentionKeepWithin, empty = off
    keep_last: int = 0
    allow_keep_newest_only: bool = False
    paused_reason: str | None = None  # only with enabled False; None = no reason given
    auto_pause_after_failures: int = 0  # 0 = never
    removal_delay_seconds: int = 0  # 0 = removed at once (no EXPIRING stage)
    overlap_policy: OverlapPolicy = DEFAULT_OVERLAP_POLICY
    notify_url: str | None = None  # None: BACKTOR_NOTIFY_URL, if set
    jitter_seconds: int = 0  # fires shift by jitter_offset(name, this); 0 = none
    verify_cron_string: str | None = None  # canonical verifyCronString; None = never
    verify_sample_rate: float | None = None  # None: BACKTOR_VERIFY_SAMPLE_RATE


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
        # 0001-01-01T00:30+01:00 is before the calendar's first UTC instant (9999-12-31 with
        # a negative offset, after its last): the calendar's end is the same bound for any
        # schedule, so it stands in (docs/api.md, fromDate and toDate).
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


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


def parse_retention(
    values: Mapping[str, object], *, allow_keep_newest_only: bool = True
) -> RetentionPolicy:
    """The policy of API fields; one that keeps only the newest needs the explicit allow."""
    try:
        policy = RetentionPolicy.from_fields(values)
    except PolicyError as error:
        raise SpecError(error.field, error.message) from None
    if policy.keeps_only_newest and not allow_keep_newest_only:
        raise SpecError(
            "allowKeepNewestOnly",
            "this retention policy would never keep anything but the newest backup (every "
            "tier retentionMinutely..retentionYearly is 0, retentionKeepWithin is empty and "
            "retentionLast is at most 1); keep more, or set allowKeepNewestOnly: true if "
            "that is meant",
        )
    return policy


def normalise_cron(text: str, field_name: str = "backupCronString") -> str:
    """The canonical six-field form of a user's cron expression (`field_name`: whose)."""
    if len(text) > MAX_CRON_CHARS:
        raise SpecError(field_name, f"{field_name} is longer than {MAX_CRON_CHARS}")
    try:
        expression = parse_cron(text).expression
    except CronError as error:
        raise SpecError(field_name, f"{field_name}: {error}") from None
    if len(expression) > MAX_CRON_CHARS:
        raise SpecError(field_name, f"{field_name} is longer than {MAX_CRON_CHARS}")
    return expression


def normalise_verify_cron(text: str | None) -> str | None:
    """verifyCronString: the backup cron's syntax; absent, null or blank = never (None)."""
    if text is None or not text.strip():
        return None
    return normalise_cron(text, "verifyCronString")


def check_sample_rate(field_name: str, value: float | None) -> float | None:
    """verifySampleRate: a number from 0 to 1; None is "the global default"."""
    if value is None:
        return None
    if isinstance(value, bool) or not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise SpecError(field_name, f"{field_name} must be a number from 0 to 1")
    return float(value)


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


def parse_overlap_policy(field_name: str, value: str | None) -> OverlapPolicy:
    """An overlap policy by its API name (exact case); None is the default (`skip`).

    `field_name`: the body field (overlapPolicy) or the trigger's query parameter (overlap).
    """
    if value is None:
        return DEFAULT_OVERLAP_POLICY
    try:
        return OverlapPolicy(value)
    except ValueError:
        names = ", ".join(policy.value for policy in OverlapPolicy)
        raise SpecError(
            field_name, f"{field_name} must be one of {names}; {value[:32]!r} is not one"
        ) from None


MAX_NOTIFY_URL_CHARS = 2048
# An absolute http(s) URL with a host name or [IPv6] address and no user info, in printable
# ASCII: the same regex is the schema's pattern, so both say exactly one thing.
NOTIFY_URL_PATTERN = (
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:[/?#][!-~]*)?"
)
_NOTIFY_URL_RE = re.compile(NOTIFY_URL_PATTERN, re.ASCII)


def _check_notify_url(value: str | None) -> str | None:
    """The spec's receiver; empty is none. The URL is never echoed: it may carry a token."""
    if value is None or value == "":
        return None
    if len(value) > MAX_NOTIFY_URL_CHARS or not _NOTIFY_URL_RE.fullmatch(value):
        raise SpecError(
            "notifyUrl",
            "notifyUrl must be an absolute http:// or https:// URL with a host and no user "
            f"info, in printable ASCII without spaces, at most {MAX_NOTIFY_URL_CHARS} characters",
        )
    return value


def _check_paused_reason(value: str | None) -> str | None:
    """Free text of at most MAX_PAUSED_REASON_CHARS; empty is no reason (None)."""
    if value is None or value == "":
        return None
    if len(value) > MAX_PAUSED_REASON_CHARS:
        raise SpecError(
            "pausedReason", f"pausedReason is longer than {MAX_PAUSED_REASON_CHARS} characters"
        )
    if "\x00" in value:
        raise SpecError("pausedReason", "pausedReason must not contain NUL characters")
    return value


def normalise_spec(draft: SpecDraft, *, default_jitter_seconds: int = 0) -> SpecValues:
    """Apply every rule and every default; raise SpecError naming the first bad field.

    Omitted optional fields take their defaults, so the result is a full replacement;
    jitterSeconds defaults to `default_jitter_seconds` (BACKTOR_JITTER_SECONDS).
    """
    name = validate_name(draft.name)
    from_date = None if draft.from_date is None else parse_instant("fromDate", draft.from_date)
    to_date = None if draft.to_date is None else parse_instant("toDate", draft.to_date)
    timezone = DEFAULT_TIMEZONE if draft.timezone is None else draft.timezone
    validate_timezone(timezone)
    allow_newest_only = bool(draft.allow_keep_newest_only)
    policy = parse_retention(draft.retention, allow_keep_newest_only=allow_newest_only)
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
    paused_reason = _check_paused_reason(draft.paused_reason)
    auto_pause = draft.auto_pause_after_failures
    auto_pause = 0 if auto_pause is None else auto_pause
    _check_int("autoPauseAfterFailures", auto_pause, 0, "of at least 0 (0 = never)")
    removal_delay = draft.removal_delay_seconds
    removal_delay = 0 if removal_delay is None else removal_delay
    _check_int("removalDelaySeconds", removal_delay, 0, "of at least 0 (0 = no delay)")
    overlap_policy = parse_overlap_policy("overlapPolicy", draft.overlap_policy)
    notify_url = _check_notify_url(draft.notify_url)
    jitter = default_jitter_seconds if draft.jitter_seconds is None else draft.jitter_seconds
    if not 0 <= jitter <= MAX_JITTER_SECONDS:
        raise SpecError(
            "jitterSeconds",
            f"jitterSeconds must be an integer from 0 to {MAX_JITTER_SECONDS} (one day)",
        )
    verify_cron = normalise_verify_cron(draft.verify_cron_string)
    sample_rate = check_sample_rate("verifySampleRate", draft.verify_sample_rate)
    # Last: every field is checked alone before the rule between two of them, so a client
    # (or a fuzzer) hears of a bad field before of the window.
    if from_date is not None and to_date is not None and to_date <= from_date:
        raise SpecError("toDate", "toDate must be later than fromDate")
    enabled = True if draft.enabled is None else draft.enabled
    if paused_reason is not None and enabled:
        raise SpecError(
            "pausedReason",
            "pausedReason goes with enabled 0 (false): it says why the spec is paused; "
            "send enabled 0 with it, or leave it out to enable the spec (which clears it)",
        )
    return SpecValues(
        name=name,
        enabled=enabled,
        from_date=from_date,
        to_date=to_date,
        cron_string=cron_string,
        cron_derived=derived,
        timezone=timezone,
        worker_config=worker_config,
        timeout_seconds=timeout,
        misfire_grace_seconds=grace,
        retention=policy.to_fields(),
        keep_within=policy.keep_within_text,
        keep_last=policy.keep_last,
        allow_keep_newest_only=allow_newest_only,
        paused_reason=paused_reason,
        auto_pause_after_failures=auto_pause,
        removal_delay_seconds=removal_delay,
        overlap_policy=overlap_policy,
        notify_url=notify_url,
        jitter_seconds=jitter,
        verify_cron_string=verify_cron,
        verify_sample_rate=sample_rate,
    )


def compute_next_fire_at(
    *,
    name: str,
    jitter_seconds: int,
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
    offset = jitter_offset(name, jitter_seconds)
    timing = Timing(
        CronSchedule(cron_string), ZoneInfo(timezone), from_date, to_date, offset=offset
    )
    try:
        return first_fire(timing, now)
    except (CronError, OverflowError):
        return None  # nothing fires any more before the end of the calendar
