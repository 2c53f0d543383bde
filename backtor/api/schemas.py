"""Request and response bodies, in the seed's camelCase.

Input models check shape only (strict types, no unknown fields); the rules that need the
domain live in backtor.core.specs. Field names are the JSON names, so there are no aliases to
keep in step.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictInt, StrictStr
from pydantic.json_schema import WithJsonSchema

from backtor.core.specs import MIN_MISFIRE_GRACE_SECONDS, SpecDraft
from backtor.db.models import Backup, BackupSpec
from backtor.db.repository import retention_fields


def _enabled_flag(value: object) -> bool:
    """The seed's 0/1, and JSON booleans; nothing else ("1", 2 and 1.0 are typos)."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ValueError("must be 0, 1, true or false")


EnabledFlag = Annotated[
    bool,
    PlainValidator(_enabled_flag),
    WithJsonSchema(
        {"oneOf": [{"type": "integer", "enum": [0, 1]}, {"type": "boolean"}]}, mode="validation"
    ),
]

_READ_ONLY = "Read-only: accepted (so a GET body can be sent back) and ignored."


def _retention(tier: str, unit: str) -> Any:
    return Field(
        default=None,
        description=(
            f"Keep N {tier} backups, taken at {unit} R: 'N@R', 'N' (= 'N@L') or empty for "
            "the default. L = the last one."
        ),
    )


class SpecIn(BaseModel):
    """A backup specification as a client sends it (POST and PUT: full replacement)."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = Field(
        default=None,
        description="1-128 letters, digits, '.', '_', '-', starting with a letter or digit.",
    )
    enabled: EnabledFlag | None = Field(default=None, description="0 or 1 (default 1).")
    fromDate: StrictStr | None = Field(
        default=None,
        description="ISO-8601 with offset or Z: no backup before this instant.",
        json_schema_extra={"format": "date-time"},
    )
    toDate: StrictStr | None = Field(
        default=None,
        description="ISO-8601 with offset or Z, later than fromDate: no backup from then on.",
        json_schema_extra={"format": "date-time"},
    )
    backupCronString: StrictStr | None = Field(
        default=None,
        description=(
            "Six fields, seconds first ('0 0 */4 ? * *'), or the classic five. Omitted or "
            "empty: derived from the retention policy."
        ),
    )
    timezone: StrictStr | None = Field(
        default=None, description="IANA zone for cron and retention periods (default UTC)."
    )
    workerConfig: StrictStr | None = Field(
        default=None,
        description="Handed to the storage workers untouched. Secret: never logged.",
    )
    timeoutSeconds: StrictInt | None = Field(
        default=None, description="Timeout of one backup, > 0 (default: none)."
    )
    misfireGraceSeconds: StrictInt | None = Field(
        default=None,
        description=(
            f"How late a missed fire may still run, >= {MIN_MISFIRE_GRACE_SECONDS} (a scheduler "
            "pass may start that late; default 3600)."
        ),
    )
    retentionMinutely: StrictStr | None = _retention("minutely", "second")
    retentionHourly: StrictStr | None = _retention("hourly", "minute")
    retentionDaily: StrictStr | None = _retention("daily", "hour")
    retentionWeekly: StrictStr | None = _retention("weekly", "weekday (0 = Sunday)")
    retentionMonthly: StrictStr | None = _retention("monthly", "day of the month")
    retentionYearly: StrictStr | None = _retention("yearly", "month")
    runningCreateWorkflowID: Any = Field(default=None, description=_READ_ONLY)
    RunningCreateWorkflowID: Any = Field(
        default=None, description=_READ_ONLY + " (the seed's spelling)"
    )
    lastUpdate: Any = Field(default=None, description=_READ_ONLY)
    createdAt: Any = Field(default=None, description=_READ_ONLY)
    cronDerived: Any = Field(default=None, description=_READ_ONLY)
    nextFireTime: Any = Field(default=None, description=_READ_ONLY)
    lastSkipTime: Any = Field(default=None, description=_READ_ONLY)
    lastSkipReason: Any = Field(default=None, description=_READ_ONLY)
    deleting: Any = Field(default=None, description=_READ_ONLY)

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
            retention={
                "retentionMinutely": self.retentionMinutely,
                "retentionHourly": self.retentionHourly,
                "retentionDaily": self.retentionDaily,
                "retentionWeekly": self.retentionWeekly,
                "retentionMonthly": self.retentionMonthly,
                "retentionYearly": self.retentionYearly,
            },
        )


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
    retentionMinutely: str
    retentionHourly: str
    retentionDaily: str
    retentionWeekly: str
    retentionMonthly: str
    retentionYearly: str
    runningCreateWorkflowID: str | None
    lastUpdate: datetime
    createdAt: datetime
    nextFireTime: datetime | None
    lastSkipTime: datetime | None
    lastSkipReason: str | None
    deleting: bool

    @classmethod
    def of(cls, spec: BackupSpec) -> SpecOut:
        return cls(
            name=spec.name,
            enabled=1 if spec.enabled else 0,
            fromDate=spec.from_date,
            toDate=spec.to_date,
            backupCronString=spec.cron_string,
            cronDerived=spec.cron_derived,
            timezone=spec.timezone,
            workerConfig=spec.worker_config,
            timeoutSeconds=spec.timeout_seconds,
            misfireGraceSeconds=spec.misfire_grace_seconds,
            runningCreateWorkflowID=spec.running_create_workflow_id,
            lastUpdate=spec.last_update,
            createdAt=spec.created_at,
            nextFireTime=spec.next_fire_at,
            lastSkipTime=spec.last_skip_at,
            lastSkipReason=spec.last_skip_reason,
            deleting=spec.deleting,
            **retention_fields(spec),
        )


class BackupOut(BaseModel):
    """One materialized backup."""

    id: int
    dataId: str | None
    status: str
    scheduledTime: datetime
    startTime: datetime | None
    endTime: datetime | None
    sizeMB: float | None
    tags: list[str]
    pinned: bool
    createWorkflowId: str | None
    removeWorkflowId: str | None

    @classmethod
    def of(cls, backup: Backup) -> BackupOut:
        return cls(
            id=backup.id,
            dataId=backup.data_id,
            status=backup.status,
            scheduledTime=backup.scheduled_at,
            startTime=backup.start_time,
            endTime=backup.end_time,
            sizeMB=backup.size_mb,
            tags=backup.tag_list,
            pinned=backup.pinned,
            createWorkflowId=backup.create_workflow_id,
            removeWorkflowId=backup.remove_workflow_id,
        )


class TriggerAccepted(BaseModel):
    name: str
    workflowId: str


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
        },
    ),
}


# -- retention: the plan, a preview of another policy, pins -----------------------------


class PolicyCandidateIn(BaseModel):
    """A retention policy to try on a spec's backups; validated as POST /backup does."""

    model_config = ConfigDict(extra="forbid")

    retentionMinutely: StrictStr | None = _retention("minutely", "second")
    retentionHourly: StrictStr | None = _retention("hourly", "minute")
    retentionDaily: StrictStr | None = _retention("daily", "hour")
    retentionWeekly: StrictStr | None = _retention("weekly", "weekday (0 = Sunday)")
    retentionMonthly: StrictStr | None = _retention("monthly", "day of the month")
    retentionYearly: StrictStr | None = _retention("yearly", "month")
    timezone: StrictStr | None = Field(
        default=None,
        description="IANA zone the periods are read in (default: the spec's own zone).",
    )

    def retention(self) -> dict[str, str | None]:
        """The six retention fields as sent (None = the tier's default)."""
        return {
            "retentionMinutely": self.retentionMinutely,
            "retentionHourly": self.retentionHourly,
            "retentionDaily": self.retentionDaily,
            "retentionWeekly": self.retentionWeekly,
            "retentionMonthly": self.retentionMonthly,
            "retentionYearly": self.retentionYearly,
        }


class PolicyFields(BaseModel):
    """A retention policy in canonical 'N@R' form."""

    retentionMinutely: str
    retentionHourly: str
    retentionDaily: str
    retentionWeekly: str
    retentionMonthly: str
    retentionYearly: str


class PlannedBackup(BaseModel):
    """One backup and what the plan does with it."""

    id: int
    dataId: str | None
    status: str
    scheduledTime: datetime
    tags: list[str] = Field(description="Tiers (with N > 0) the backup represents.")
    action: Literal["keep", "remove", "ignore"] = Field(
        description="ignore: not COMPLETED, so neither kept nor removed by retention."
    )
    reasons: list[str] = Field(description="Why kept: tiers, 'newest', 'pinned'.")
    pinned: bool


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
