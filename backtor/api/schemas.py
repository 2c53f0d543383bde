"""Request and response bodies, in the seed's camelCase.

Input models check shape only (strict types, no unknown fields); the rules that need the
domain live in backtor.core.specs. Field names are the JSON names, so there are no aliases to
keep in step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Annotated, Any, Literal

from fastapi.openapi.models import Example
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    StringConstraints,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import to_json
from sqlalchemy.engine import Row

from backtor.api import patterns
from backtor.core.errors import InvalidField
from backtor.core.policy import (
    FIELD_BY_TIER,
    KEEP_WITHIN_FIELD,
    LAST_FIELD,
    MAX_COUNT,
    RetentionPolicy,
    Tier,
)
from backtor.core.schedule import OverlapPolicy
from backtor.core.specs import (
    MAX_DATE_CHARS,
    MAX_INT32,
    MAX_JITTER_SECONDS,
    MAX_NOTIFY_URL_CHARS,
    MAX_PAUSED_REASON_CHARS,
    MAX_WORKER_CONFIG_CHARS,
    MIN_MISFIRE_GRACE_SECONDS,
    NOTIFY_URL_PATTERN,
    SpecDraft,
)
from backtor.db.models import Backup, BackupSpec, BackupStatus

# What SpecOut and BackupOut are made of: an entity, or a row of the same columns
# (backtor.db.repository's read paths).
SpecSource = BackupSpec | Row[Any]
BackupSource = Backup | Row[Any]


def _enabled_flag(value: object) -> bool:
    """The seed's 0/1, and JSON booleans; nothing else ("1" and 2 are typos).

    1.0 is 1: JSON Schema counts a number by its value, so the schema's `[0, 1]` holds it.
    """
    if isinstance(value, bool):
        return value
    if type(value) in (int, float) and value in (0, 1):
        return bool(value)
    raise ValueError("must be 0, 1, true or false")


def _json_integer(value: object) -> int:
    """A JSON number without a fraction: 7200 and 7200.0 are one value to JSON Schema."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise ValueError("Input should be a valid integer")


def _json_number(value: object) -> float:
    """A JSON number, integer or not (true and false are no numbers)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits: out of every range
            return math.inf if value > 0 else -math.inf
    raise ValueError("Input should be a valid number")


EnabledFlag = Annotated[
    bool,
    PlainValidator(_enabled_flag),
    WithJsonSchema(
        {"oneOf": [{"type": "integer", "enum": [0, 1]}, {"type": "boolean"}]}, mode="validation"
    ),
]

_READ_ONLY = "Read-only: accepted (so a GET body can be sent back) and ignored."

# The strings and numbers below carry their rule in the JSON schema as well (pattern, enum,
# bounds), written from the same core rule the server applies: the domain check stays in
# backtor.core.specs (its messages name the rule), the schema says the same thing up front.


def _int_schema(low: int, high: int = MAX_INT32) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})


def _retention_schema(tier: Tier) -> WithJsonSchema:
    """The tier's rule as a pattern; the length cap is checked here too (422)."""
    return WithJsonSchema(
        {
            "type": "string",
            "maxLength": patterns.MAX_RETENTION_CHARS,
            "pattern": patterns.retention(tier),
        }
    )


_RETENTION_LENGTH = StringConstraints(strict=True, max_length=patterns.MAX_RETENTION_CHARS)


def _retention(tier: Tier, unit: str) -> Any:
    return Field(
        default=None,
        description=(
            f"Keep N {tier.value} backups, taken at {unit} R: 'N@R', 'N' (= 'N@L') or empty "
            "(blank) for the default; N 0..100000, L = the last one; surrounding whitespace "
            "is ignored."
        ),
    )


RetentionMinutely = Annotated[str, _RETENTION_LENGTH, _retention_schema(Tier.MINUTELY)]
RetentionHourly = Annotated[str, _RETENTION_LENGTH, _retention_schema(Tier.HOURLY)]
RetentionDaily = Annotated[str, _RETENTION_LENGTH, _retention_schema(Tier.DAILY)]
RetentionWeekly = Annotated[str, _RETENTION_LENGTH, _retention_schema(Tier.WEEKLY)]
RetentionMonthly = Annotated[str, _RETENTION_LENGTH, _retention_schema(Tier.MONTHLY)]
RetentionYearly = Annotated[str, _RETENTION_LENGTH, _retention_schema(Tier.YEARLY)]
SpecName = Annotated[StrictStr, WithJsonSchema({"type": "string", "pattern": patterns.NAME})]
Timezone = Annotated[
    StrictStr, WithJsonSchema({"type": "string", "enum": patterns.timezone_names()})
]
Instant = Annotated[
    StrictStr,
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": MAX_DATE_CHARS}),
]
CronText = Annotated[
    StrictStr,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": patterns.MAX_CRON_INPUT_CHARS,
            "pattern": patterns.CRON,
            "format": "cron",
        }
    ),
]
WorkerConfig = Annotated[
    StrictStr,
    WithJsonSchema(
        {"type": "string", "maxLength": MAX_WORKER_CONFIG_CHARS, "pattern": patterns.NO_NUL}
    ),
]
TimeoutSeconds = Annotated[int, PlainValidator(_json_integer), _int_schema(1)]
MisfireGraceSeconds = Annotated[
    int, PlainValidator(_json_integer), _int_schema(MIN_MISFIRE_GRACE_SECONDS)
]
KeepWithinText = Annotated[
    str,
    _RETENTION_LENGTH,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": patterns.MAX_RETENTION_CHARS,
            "pattern": patterns.KEEP_WITHIN,
        }
    ),
]
NotifyUrl = Annotated[
    StrictStr,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_NOTIFY_URL_CHARS,
            "pattern": f"^(?:{NOTIFY_URL_PATTERN})?$",
        }
    ),
]
RetentionLast = Annotated[int, PlainValidator(_json_integer), _int_schema(0, MAX_COUNT)]
PausedReason = Annotated[
    StrictStr,
    WithJsonSchema(
        {"type": "string", "maxLength": MAX_PAUSED_REASON_CHARS, "pattern": patterns.NO_NUL}
    ),
]
AutoPauseAfterFailures = Annotated[int, PlainValidator(_json_integer), _int_schema(0)]
RemovalDelaySeconds = Annotated[int, PlainValidator(_json_integer), _int_schema(0)]
JitterSeconds = Annotated[int, PlainValidator(_json_integer), _int_schema(0, MAX_JITTER_SECONDS)]
SampleRate = Annotated[
    float,
    PlainValidator(_json_number),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]
OVERLAP_POLICIES = [policy.value for policy in OverlapPolicy]
OverlapPolicyText = Annotated[
    StrictStr, WithJsonSchema({"type": "string", "enum": OVERLAP_POLICIES})
]
OVERLAP_RULE = (
    "What a fire does while the spec's previous create_backup still runs: skip (recorded "
    "skipped, reason running), bufferOne (one fire waits and starts when the run ends; more "
    "are skipped), allow (starts beside it) or terminateOther (terminates it, then starts)"
)
_NAME_RULE = f"{patterns.NAME_RULE}."
_ZONE_RULE = "an IANA time zone name, e.g. 'UTC' or 'Europe/Berlin'"
_INSTANT_RULE = (
    "an ISO-8601 date-time with an offset or Z (every RFC 3339 date-time is one); instants "
    "beyond 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999Z are taken as those ends"
)


class RetentionIn(BaseModel):
    """The retention fields a spec and a policy preview share."""

    model_config = ConfigDict(extra="forbid")

    retentionMinutely: RetentionMinutely | None = _retention(Tier.MINUTELY, "second")
    retentionHourly: RetentionHourly | None = _retention(Tier.HOURLY, "minute")
    retentionDaily: RetentionDaily | None = _retention(Tier.DAILY, "hour")
    retentionWeekly: RetentionWeekly | None = _retention(
        Tier.WEEKLY, "weekday (0 = Sunday, or SUN..SAT)"
    )
    retentionMonthly: RetentionMonthly | None = _retention(Tier.MONTHLY, "day of the month")
    retentionYearly: RetentionYearly | None = _retention(Tier.YEARLY, "month")
    retentionKeepWithin: KeepWithinText | None = Field(
        default=None,
        description=(
            "Keep every backup taken within this duration of the newest one (reason "
            "`within`): '36h', '7d', '2w', '1d12h' (units w, d, h, m, s, largest first; "
            "weeks and days on the zone's calendar, the rest elapsed); empty = off."
        ),
    )
    retentionLast: RetentionLast | None = Field(
        default=None,
        description="Keep the N newest backups (reason `last`), 0..100000 (default 0).",
    )

    def retention(self) -> dict[str, object]:
        """The retention fields as sent (None = the field's default)."""
        return {
            "retentionMinutely": self.retentionMinutely,
            "retentionHourly": self.retentionHourly,
            "retentionDaily": self.retentionDaily,
            "retentionWeekly": self.retentionWeekly,
            "retentionMonthly": self.retentionMonthly,
            "retentionYearly": self.retentionYearly,
            KEEP_WITHIN_FIELD: self.retentionKeepWithin,
            LAST_FIELD: self.retentionLast,
        }


class SpecIn(RetentionIn):
    """A backup specification as a client sends it (POST and PUT: full replacement)."""

    model_config = ConfigDict(extra="forbid")

    name: SpecName | None = Field(
        default=None,
        description=(
            f"{_NAME_RULE} Optional here: the name is the path's. When sent, it must equal "
            "the name in the path (a spec cannot be renamed): another name is refused with "
            '409, `field` "name".'
        ),
    )
    enabled: EnabledFlag | None = Field(default=None, description="0 or 1 (default 1).")
    fromDate: Instant | None = Field(
        default=None,
        description=f"No backup before this instant: {_INSTANT_RULE}.",
    )
    toDate: Instant | None = Field(
        default=None,
        description=(
            f"No backup from this instant on: {_INSTANT_RULE}. Later than fromDate: a rule "
            "between two fields, which no schema can state, answered 422."
        ),
    )
    backupCronString: CronText | None = Field(
        default=None,
        description=(
            f"When backups are taken ('0 0 */4 ? * *'): {patterns.CRON_RULE}. At most "
            f"{patterns.MAX_CRON_INPUT_CHARS} characters. It must fire at least once within 50 "
            "years (not 'February 30'): a rule no pattern can state, answered 422. Omitted, "
            "null or blank: derived from the retention policy."
        ),
    )
    timezone: Timezone | None = Field(
        default=None,
        description=f"Zone of the cron and of the retention periods: {_ZONE_RULE} (default UTC).",
    )
    workerConfig: WorkerConfig | None = Field(
        default=None,
        description=(
            "Handed to the storage workers untouched (no NUL character). Secret: never logged."
        ),
    )
    timeoutSeconds: TimeoutSeconds | None = Field(
        default=None, description="Timeout of one backup, > 0 (default: none)."
    )
    misfireGraceSeconds: MisfireGraceSeconds | None = Field(
        default=None,
        description=(
            f"How late a missed fire may still run, >= {MIN_MISFIRE_GRACE_SECONDS} (a scheduler "
            "pass may start that late; default 3600)."
        ),
    )
    overlapPolicy: OverlapPolicyText | None = Field(
        default=None, description=f"{OVERLAP_RULE}. Default skip."
    )
    notifyUrl: NotifyUrl | None = Field(
        default=None,
        description=(
            "Where this spec's notifications are POSTed (docs/notifications.md): an absolute "
            "http(s) URL without user info; empty or null = BACKTOR_NOTIFY_URL, if set. "
            "Treated as a secret: never logged."
        ),
    )
    allowKeepNewestOnly: StrictBool | None = Field(
        default=None,
        description=(
            "A policy that would never keep anything but the newest backup (every tier 0, "
            "no retentionKeepWithin, retentionLast <= 1) is refused with 422 unless this is "
            "true (default false)."
        ),
    )
    pausedReason: PausedReason | None = Field(
        default=None,
        description=(
            f"Why the spec is paused: free text, at most {MAX_PAUSED_REASON_CHARS} characters "
            "(no NUL); empty is none. Only with enabled 0: sent with enabled 1 or without "
            "enabled (1 by default) it is refused with 422, a rule between two fields no "
            "schema can state. A PUT that enables the spec (or leaves it out) clears it; "
            "autoPauseAfterFailures sets it."
        ),
    )
    autoPauseAfterFailures: AutoPauseAfterFailures | None = Field(
        default=None,
        description=(
            "Pause the spec (enabled 0, pausedReason saying so) after this many consecutive "
            "FAILED or TIMED_OUT backups; a COMPLETED one resets the count. 0 = never "
            "(default)."
        ),
    )
    removalDelaySeconds: RemovalDelaySeconds | None = Field(
        default=None,
        description=(
            "A backup retention removes is EXPIRING for this many seconds first (expiresAt), "
            "and removed only then, unless a pin, a policy change or a retention run keeps it "
            "again. 0 = removed at once (default)."
        ),
    )
    jitterSeconds: JitterSeconds | None = Field(
        default=None,
        description=(
            "Every fire comes this spec's fixed offset later than its cron says: an offset "
            "from 0 to jitterSeconds drawn from a hash of the name, the same in every "
            "process and release (nextFireTime shows it). Specs sharing a cron then spread "
            "over the window instead of hitting storage in the same second. Default: "
            f"BACKTOR_JITTER_SECONDS (0 unless set); at most {MAX_JITTER_SECONDS}."
        ),
    )
    verifyCronString: CronText | None = Field(
        default=None,
        description=(
            'When backups are verified (docs/restore.md, "Scheduled verification"): each '
            "fire starts a verify_backup of the newest COMPLETED backup unless it was verified "
            "since the previous fire, and of a sample of older ones (verifySampleRate). The "
            "same syntax as backupCronString, in the spec's timezone, shifted by its jitter. "
            "It must fire at least once within 50 years: a rule no pattern can state, "
            "answered 422. Omitted, null or blank: never."
        ),
    )
    verifySampleRate: SampleRate | None = Field(
        default=None,
        description=(
            "The share of the older COMPLETED backups (all but the newest) each verifyCron "
            "fire verifies too: ceil(rate x their number), never verified first, then least "
            "recently verified; at most 20 a fire. A number from 0 to 1. Omitted or null: "
            "BACKTOR_VERIFY_SAMPLE_RATE (0 unless set), read at each fire."
        ),
    )
    consecutiveFailures: Any = Field(default=None, description=_READ_ONLY)
    runningCreateWorkflowID: Any = Field(default=None, description=_READ_ONLY)
    RunningCreateWorkflowID: Any = Field(
        default=None, description=_READ_ONLY + " (the seed's spelling)"
    )
    lastUpdate: Any = Field(default=None, description=_READ_ONLY)
    createdAt: Any = Field(default=None, description=_READ_ONLY)
    cronDerived: Any = Field(default=None, description=_READ_ONLY)
    nextFireTime: Any = Field(default=None, description=_READ_ONLY)
    nextVerifyTime: Any = Field(default=None, description=_READ_ONLY)
    lastSkipTime: Any = Field(default=None, description=_READ_ONLY)
    lastSkipReason: Any = Field(default=None, description=_READ_ONLY)
    deleting: Any = Field(default=None, description=_READ_ONLY)

    def check_cron_syntax(self) -> None:
        """The documented syntax (the schema's pattern), after core accepted the cron.

        croniter takes more ("1 * 1", both day fields; "5-3/0"-like oddities); the API
        takes what its schema states, so a client validating against it is never refused.
        Checked after core, so a cron croniter refuses keeps core's precise message.
        """
        for name, text in (
            ("backupCronString", self.backupCronString),
            ("verifyCronString", self.verifyCronString),
        ):
            if text is None:
                continue
            if len(text) > patterns.MAX_CRON_INPUT_CHARS:
                raise InvalidField(
                    name, f"{name} is longer than {patterns.MAX_CRON_INPUT_CHARS} characters"
                )
            if not re.fullmatch(patterns.CRON, text):
                raise InvalidField(
                    name, f"{name} is outside the supported syntax: {patterns.CRON_RULE}"
                )

    def to_draft(self, name: str) -> SpecDraft:
        return SpecDraft(
            name=name,
            enabled=self.enabled,
            from_date=self.fromDate,
            to_date=self.toDate,
            backup_cron_string=self.backupCronString,
            timezone=self.timezone,
            worker_config=self.workerConfig,
            timeout_seconds=self.timeoutSeconds,
            misfire_grace_seconds=self.misfireGraceSeconds,
            overlap_policy=self.overlapPolicy,
            notify_url=self.notifyUrl,
            retention=self.retention(),
            allow_keep_newest_only=self.allowKeepNewestOnly,
            paused_reason=self.pausedReason,
            auto_pause_after_failures=self.autoPauseAfterFailures,
            removal_delay_seconds=self.removalDelaySeconds,
            jitter_seconds=self.jitterSeconds,
            verify_cron_string=self.verifyCronString,
            verify_sample_rate=self.verifySampleRate,
        )


class SpecCreate(SpecIn):
    """A new specification (POST /backup), or the seed's PUT /backup: the body names it."""

    name: SpecName = Field(description=_NAME_RULE)


class SpecOut(BaseModel):
    """A stored specification: every field, defaults filled in, plus the read-only state."""

    name: str
    enabled: Literal[0, 1]
    fromDate: datetime | None
    toDate: datetime | None
    backupCronString: str
    cronDerived: bool
    timezone: str
    workerConfig: str | None
    timeoutSeconds: int | None
    misfireGraceSeconds: int
    overlapPolicy: str
    notifyUrl: str | None
    retentionMinutely: str
    retentionHourly: str
    retentionDaily: str
    retentionWeekly: str
    retentionMonthly: str
    retentionYearly: str
    retentionKeepWithin: str
    retentionLast: int
    allowKeepNewestOnly: bool
    pausedReason: str | None
    autoPauseAfterFailures: int
    removalDelaySeconds: int
    jitterSeconds: int
    verifyCronString: str | None = Field(
        default=None, description="When backups are verified (canonical form); null = never."
    )
    verifySampleRate: float | None = Field(
        default=None,
        description="The older backups' sample rate; null = BACKTOR_VERIFY_SAMPLE_RATE.",
    )
    nextVerifyTime: datetime | None = Field(
        default=None,
        description=(
            "The next verifyCron fire (null: none). In the past for a moment: a fire due and "
            "not yet acted on (a paused spec's waits for it to be enabled again)."
        ),
    )
    consecutiveFailures: int = Field(
        description="FAILED or TIMED_OUT backups in a row since the last COMPLETED one (or "
        "since the spec was enabled again); autoPauseAfterFailures acts on it."
    )
    runningCreateWorkflowID: str | None
    lastUpdate: datetime
    createdAt: datetime
    nextFireTime: datetime | None
    lastSkipTime: datetime | None
    lastSkipReason: str | None
    deleting: bool

    @classmethod
    def of(cls, spec: SpecSource) -> SpecOut:
        return cls(**spec_fields(spec))


# SpecOut's fields, in the model's order, each with the column (BackupSpec's attribute) it
# shows.
_SPEC_FIELD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "name"),
    ("enabled", "enabled"),
    ("fromDate", "from_date"),
    ("toDate", "to_date"),
    ("backupCronString", "cron_string"),
    ("cronDerived", "cron_derived"),
    ("timezone", "timezone"),
    ("workerConfig", "worker_config"),
    ("timeoutSeconds", "timeout_seconds"),
    ("misfireGraceSeconds", "misfire_grace_seconds"),
    ("overlapPolicy", "overlap_policy"),
    ("notifyUrl", "notify_url"),
    *((field, f"retention_{tier.value}") for tier, field in FIELD_BY_TIER.items()),
    (KEEP_WITHIN_FIELD, "retention_keep_within"),
    (LAST_FIELD, "retention_last"),
    ("allowKeepNewestOnly", "allow_keep_newest_only"),
    ("pausedReason", "paused_reason"),
    ("autoPauseAfterFailures", "auto_pause_after_failures"),
    ("removalDelaySeconds", "removal_delay_seconds"),
    ("jitterSeconds", "jitter_seconds"),
    ("verifyCronString", "verify_cron_string"),
    ("verifySampleRate", "verify_sample_rate"),
    ("nextVerifyTime", "next_verify_at"),
    ("consecutiveFailures", "consecutive_failures"),
    ("runningCreateWorkflowID", "running_create_workflow_id"),
    ("lastUpdate", "last_update"),
    ("createdAt", "created_at"),
    ("nextFireTime", "next_fire_at"),
    ("lastSkipTime", "last_skip_at"),
    ("lastSkipReason", "last_skip_reason"),
    ("deleting", "deleting"),
)
_SPEC_OUT_FIELDS = tuple(field for field, _ in _SPEC_FIELD_COLUMNS)
_SPEC_COLUMNS = tuple(column for _, column in _SPEC_FIELD_COLUMNS)


def _values_of(source: object, columns: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """What reads `columns` off `source`'s kind, all at once: attributes of an entity, or
    positions of a row (a row's attributes are looked up one name at a time, far slower).
    Rows of one result share their columns: callers make one getter per result."""
    if isinstance(source, Row):
        fields = source._fields
        return itemgetter(*(fields.index(column) for column in columns))
    return attrgetter(*columns)


def _spec_dict(values: tuple[Any, ...]) -> dict[str, Any]:
    fields = dict(zip(_SPEC_OUT_FIELDS, values, strict=True))
    fields["enabled"] = 1 if fields["enabled"] else 0
    rate = fields["verifySampleRate"]
    if rate is not None:
        fields["verifySampleRate"] = float(rate)
    return fields


def spec_fields(spec: SpecSource) -> dict[str, Any]:
    """SpecOut's fields of a stored spec (an entity or a row), in the model's order.

    SpecOut.of validates them; the read routes write them as JSON directly (specs_json),
    the same bytes.
    """
    return _spec_dict(_values_of(spec, _SPEC_COLUMNS)(spec))


class BackupOut(BaseModel):
    """One materialized backup."""

    id: int
    dataId: str | None
    status: BackupStatus
    scheduledTime: datetime
    startTime: datetime | None
    endTime: datetime | None
    sizeMB: float | None
    tags: list[str]
    pinned: bool
    createWorkflowId: str | None
    removeWorkflowId: str | None
    expiresAt: datetime | None = Field(
        default=None,
        description=(
            "EXPIRING: when its removal starts unless a pin, a policy change or a retention "
            "run keeps it again (removalDelaySeconds after the plan removed it). REMOVING or "
            "REMOVED after a delay: when it was due. Otherwise null."
        ),
    )
    lastError: str | None = Field(
        default=None,
        description=(
            "Why it failed, timed out or was terminated (e.g. by overlapPolicy terminateOther), "
            "or why its last removal failed; else null."
        ),
    )
    checksum: str | None = Field(
        default=None,
        description="SHA-256 of the stored backup, as its backup task output it; else null.",
    )
    verifyStatus: Literal["VERIFIED", "FAILED", "NEVER"] = Field(
        default="NEVER",
        description=(
            "The last verification's verdict: VERIFIED (intact, restores), FAILED (damaged, "
            "missing or unreadable: verifyDetails says why), NEVER (not verified yet)."
        ),
    )
    lastVerifiedAt: datetime | None = Field(
        default=None, description="When the last verdict was reached (checkedAt); else null."
    )
    verifyDetails: str | None = Field(
        default=None,
        description="What the last verification checked or found, or why its run failed.",
    )
    lastVerify: RunOut | None = Field(
        default=None, description="The last verify_backup run; null when none was requested."
    )
    lastRestore: RunOut | None = Field(
        default=None, description="The last restore_backup run; null when none was requested."
    )

    @classmethod
    def of(cls, backup: BackupSource) -> BackupOut:
        return cls(**backup_fields(backup))


# The columns (Backup's attributes) BackupOut is made of.
_BACKUP_COLUMNS = (
    "id",
    "data_id",
    "status",
    "scheduled_at",
    "start_time",
    "end_time",
    "size_mb",
    "tags",
    "pinned",
    "create_workflow_id",
    "remove_workflow_id",
    "expires_at",
    "last_error",
    "checksum",
    "verify_status",
    "last_verified_at",
    "verify_details",
    "verify_workflow_id",
    "verify_run_status",
    "verify_requested_at",
    "restore_workflow_id",
    "restore_status",
    "restore_requested_at",
    "restore_details",
)


def _backup_dict(values: tuple[Any, ...]) -> dict[str, Any]:
    (
        backup_id,
        data_id,
        status,
        scheduled_at,
        start_time,
        end_time,
        size_mb,
        tags,
        pinned,
        create_workflow_id,
        remove_workflow_id,
        expires_at,
        last_error,
        checksum,
        verify_status,
        last_verified_at,
        verify_details,
        verify_workflow_id,
        verify_run_status,
        verify_requested_at,
        restore_workflow_id,
        restore_status,
        restore_requested_at,
        restore_details,
    ) = values
    return {
        "id": backup_id,
        "dataId": data_id,
        "status": status,
        "scheduledTime": scheduled_at,
        "startTime": start_time,
        "endTime": end_time,
        "sizeMB": None if size_mb is None else float(size_mb),
        "tags": [tag for tag in tags.split(",") if tag],  # Backup.tag_list
        "pinned": pinned,
        "createWorkflowId": create_workflow_id,
        "removeWorkflowId": remove_workflow_id,
        "expiresAt": expires_at,
        "lastError": last_error,
        "checksum": checksum,
        "verifyStatus": _verify_status(verify_status),
        "lastVerifiedAt": last_verified_at,
        "verifyDetails": verify_details,
        "lastVerify": _run_fields(verify_workflow_id, verify_run_status, verify_requested_at),
        "lastRestore": _run_fields(
            restore_workflow_id, restore_status, restore_requested_at, restore_details
        ),
    }


def backup_fields(backup: BackupSource) -> dict[str, Any]:
    """BackupOut's fields of a stored backup (an entity or a row), in the model's order;
    as spec_fields, validated by BackupOut.of or written directly (backups_json)."""
    return _backup_dict(_values_of(backup, _BACKUP_COLUMNS)(backup))


def _run_fields(
    workflow_id: str | None,
    status: str | None,
    requested_at: datetime | None,
    details: str | None = None,
) -> dict[str, Any] | None:
    """RunOut's fields, in its order; None when no run was requested."""
    if status is None:
        return None
    return {
        "workflowId": workflow_id,
        "status": status,
        "requestedAt": requested_at,
        "details": details,
    }


def json_bytes(fields: object) -> bytes:
    """A response model's fields (dicts in the model's field order, lists, plain values) as
    the JSON FastAPI would write for the model, without building and validating it.

    The read routes take their values from typed columns (strings, integers, booleans,
    floats made float, aware datetimes), so validating them once more could only cost
    time: pydantic's own serializer writes them, infinities as null as the models do.
    tests/api/test_read_json.py checks every read route's answer against its model.
    """
    return to_json(fields, inf_nan_mode="null")


def specs_json(specs: Sequence[SpecSource]) -> bytes:
    """`list[SpecOut]`, as json_bytes writes it (the specs: rows of one result, or entities)."""
    if not specs:
        return b"[]"
    values = _values_of(specs[0], _SPEC_COLUMNS)
    return json_bytes([_spec_dict(values(spec)) for spec in specs])


def spec_json(spec: SpecSource) -> bytes:
    """One SpecOut, as json_bytes writes it."""
    return json_bytes(spec_fields(spec))


def backups_json(backups: Sequence[BackupSource]) -> bytes:
    """`list[BackupOut]`, as json_bytes writes it (rows of one result, or entities)."""
    if not backups:
        return b"[]"
    values = _values_of(backups[0], _BACKUP_COLUMNS)
    return json_bytes([_backup_dict(values(backup)) for backup in backups])


def _verify_status(value: str) -> Literal["VERIFIED", "FAILED", "NEVER"]:
    if value == "VERIFIED":
        return "VERIFIED"
    return "FAILED" if value == "FAILED" else "NEVER"


RunStatus = Literal["STARTING", "RUNNING", "COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED"]


class RunOut(BaseModel):
    """A restore_backup or verify_backup run Backtor started and follows."""

    workflowId: str | None = Field(
        description="The Conductor workflow; null while its start is unconfirmed (STARTING)."
    )
    status: RunStatus = Field(
        description=(
            "STARTING (its start is in flight), RUNNING, then how it ended: COMPLETED, "
            "FAILED, TIMED_OUT or TERMINATED."
        ),
    )
    requestedAt: datetime | None = Field(description="When it was requested.")
    details: str | None = Field(
        default=None,
        description=(
            "A restore's outcome: where it restored to, or why it failed (the storage worker's "
            "reason). Null for a verification (see verifyDetails) and while running."
        ),
    )

    @classmethod
    def of(
        cls,
        workflow_id: str | None,
        status: str | None,
        requested_at: datetime | None,
        details: str | None = None,
    ) -> RunOut | None:
        fields = _run_fields(workflow_id, status, requested_at, details)
        if fields is None:
            return None
        return cls.model_validate(fields)


RunConfig = Annotated[
    StrictStr,
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_WORKER_CONFIG_CHARS,
            "pattern": patterns.NO_NUL,
        }
    ),
]


class RestoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    restoreConfig: RunConfig = Field(
        description=(
            "Where and how to restore, a JSON object as a string, handed to the storage "
            'worker\'s restore task untouched: filesystem `{"target": "/abs/dir", '
            '"overwrite": false}`, postgres `{"dsn": "postgresql://...", "overwrite": false}` '
            "(docs/storage-workers.md). Not empty, no NUL character. Secret: never logged."
        )
    )


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verifyConfig: RunConfig | None = Field(
        default=None,
        description=(
            'How to verify, a JSON object as a string: `{"deep": true}` (postgres: restore '
            "into a throwaway database and compare row counts). Optional; no NUL character."
        ),
    )


class RunAccepted(BaseModel):
    name: str
    backupId: int
    workflowId: str = Field(description="The restore_backup or verify_backup run started.")


class TriggerAccepted(BaseModel):
    name: str
    workflowId: str | None = Field(
        description="The create_backup started; null when the backup is buffered."
    )
    buffered: bool = Field(
        default=False,
        description=(
            "Present (true) under overlapPolicy bufferOne when a backup runs: this one waits "
            "and starts once it ends."
        ),
    )
    terminated: list[str] = Field(
        default_factory=list,
        description=(
            "Present under overlapPolicy terminateOther: the create_backup runs it terminated."
        ),
    )


class PurgeAccepted(BaseModel):
    name: str
    message: str
    pendingBackups: int = Field(description="Backups not yet removed; the spec goes at 0.")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    revision: list[str]


SPEC_EXAMPLES: dict[str, Example] = {
    "default": Example(
        summary="Default policy, derived cron",
        description="Retention as in the seed's default; the cron is derived (daily).",
        value={
            "name": "db-main",
            "enabled": 1,
            "retentionMinutely": "0@L",
            "retentionHourly": "0@L",
            "retentionDaily": "4@L",
            "retentionWeekly": "3@L",
            "retentionMonthly": "3@L",
            "retentionYearly": "2@L",
        },
    ),
    "daily": Example(
        summary="Simple daily backups",
        value={"name": "files-home", "retentionDaily": "7", "workerConfig": '{"path":"/home"}'},
    ),
    "every4h": Example(
        summary="Every 4 hours",
        value={
            "name": "orders-db",
            "enabled": 1,
            "backupCronString": "0 0 */4 ? * *",
            "timezone": "Europe/Berlin",
            "retentionHourly": "6",
            "retentionDaily": "0@3",
            "retentionMonthly": "2@L",
            "timeoutSeconds": 7200,
            "fromDate": "2024-05-01T00:00:00Z",
            "toDate": "2034-05-01T00:00:00Z",
        },
    ),
}


# -- retention: the plan, a preview of another policy, pins -----------------------------


class PolicyCandidateIn(RetentionIn):
    """A retention policy to try on a spec's backups; validated as POST /backup does."""

    model_config = ConfigDict(extra="forbid")

    timezone: Timezone | None = Field(
        default=None,
        description=f"Zone the periods are read in: {_ZONE_RULE} (default: the spec's own).",
    )


class PolicyFields(BaseModel):
    """A retention policy in canonical 'N@R' form."""

    retentionMinutely: str
    retentionHourly: str
    retentionDaily: str
    retentionWeekly: str
    retentionMonthly: str
    retentionYearly: str
    retentionKeepWithin: str
    retentionLast: int

    @classmethod
    def of(cls, policy: RetentionPolicy) -> PolicyFields:
        return cls(
            **policy.to_fields(),
            retentionKeepWithin=policy.keep_within_text,
            retentionLast=policy.keep_last,
        )


class PlannedBackup(BaseModel):
    """One backup and what the plan does with it."""

    id: int
    dataId: str | None
    status: BackupStatus
    scheduledTime: datetime
    tags: list[str] = Field(description="Tiers (with N > 0) the backup represents.")
    action: Literal["keep", "remove", "ignore"] = Field(
        description=(
            "ignore: neither COMPLETED nor EXPIRING, so neither kept nor removed by "
            "retention. An EXPIRING backup is planned like a COMPLETED one: 'keep' puts it "
            "back to COMPLETED at the next retention run."
        )
    )
    reasons: list[str] = Field(description="Why kept: tiers, 'newest', 'pinned'.")
    pinned: bool
    expiresAt: datetime | None = Field(
        default=None,
        description="EXPIRING: when its removal starts (removalDelaySeconds); else null.",
    )


class PlanSummary(BaseModel):
    keep: int
    remove: int
    ignore: int


class RetentionPlanOut(BaseModel):
    """The plan for one spec's recorded backups, newest first; nothing is removed by it."""

    name: str
    timezone: str
    policy: PolicyFields
    summary: PlanSummary
    backups: list[PlannedBackup]


class RetentionPreviewOut(RetentionPlanOut):
    """The plan a candidate policy would give, and how it differs from today's."""

    additionalRemovals: list[int] = Field(
        description="Removed by the candidate, kept by today's plan (newest first)."
    )
    additionalKeeps: list[int] = Field(
        description="Kept by the candidate, removed by today's plan (newest first)."
    )


PREVIEW_EXAMPLES: dict[str, Example] = {
    "hourly": Example(
        summary="Add 24 hourly backups",
        description="Tiers not given take their defaults, as in POST /backup.",
        value={"retentionHourly": "24", "retentionDaily": "7"},
    ),
    "fewer": Example(
        summary="Keep less: 2 daily, no weekly",
        value={
            "retentionDaily": "2",
            "retentionWeekly": "0",
            "retentionMonthly": "3@L",
            "retentionYearly": "2@L",
        },
    ),
    "zone": Example(
        summary="The default policy, periods read in Europe/Berlin",
        value={"timezone": "Europe/Berlin"},
    ),
}
