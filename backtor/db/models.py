"""SQLAlchemy models: the backup specifications and the backups taken for them.

The same schema serves PostgreSQL and SQLite; Alembic's migrations in `migrations/` create
it, and these classes must stay in step with them (tests/integration/test_migrations.py
compares the two).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from backtor.db.types import UTCDateTime

# Stable constraint names: Alembic needs them to alter or drop constraints later, and SQLite's
# batch mode needs them to rebuild a table.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DEFAULT_TIMEZONE = "UTC"
DEFAULT_MISFIRE_GRACE_SECONDS = 3600


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BackupStatus(StrEnum):
    """Life cycle of one materialized backup."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    EXPIRING = "EXPIRING"  # the plan removes it; its removal waits out removalDelaySeconds
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REMOVING = "REMOVING"
    REMOVED = "REMOVED"
    REMOVE_FAILED = "REMOVE_FAILED"


# Backups whose data may still exist in storage: a spec cannot be forgotten while it has any.
UNREMOVED_STATUSES: frozenset[BackupStatus] = frozenset(
    {
        BackupStatus.RUNNING,
        BackupStatus.COMPLETED,
        BackupStatus.EXPIRING,
        BackupStatus.REMOVING,
        BackupStatus.REMOVE_FAILED,
    }
)


class BackupSpec(Base):
    """What to back up, when, and how long to keep it (one row per `/backup` name)."""

    __tablename__ = "backup_spec"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    from_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    to_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cron_string: Mapped[str] = mapped_column(String(256), nullable=False)
    cron_derived: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    timezone: Mapped[str] = mapped_column(
        String(64), nullable=False, default=DEFAULT_TIMEZONE, server_default=DEFAULT_TIMEZONE
    )
    worker_config: Mapped[str | None] = mapped_column(Text, nullable=True)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    misfire_grace_seconds: Mapped[int] = mapped_column(
        Integer,
        nullable=False,
        default=DEFAULT_MISFIRE_GRACE_SECONDS,
        server_default=text(str(DEFAULT_MISFIRE_GRACE_SECONDS)),
    )
    retention_minutely: Mapped[str] = mapped_column(String(32), nullable=False)
    retention_hourly: Mapped[str] = mapped_column(String(32), nullable=False)
    retention_daily: Mapped[str] = mapped_column(String(32), nullable=False)
    retention_weekly: Mapped[str] = mapped_column(String(32), nullable=False)
    retention_monthly: Mapped[str] = mapped_column(String(32), nullable=False)
    retention_yearly: Mapped[str] = mapped_column(String(32), nullable=False)
    running_create_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_update: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    last_skip_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_skip_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deleting: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # Schedule and retention controls (docs/api.md): defaults keep the seed's behaviour.
    overlap_policy: Mapped[str] = mapped_column(
        String(16), nullable=False, default="skip", server_default="skip"
    )
    paused_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    auto_pause_after_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    consecutive_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    retention_keep_within: Mapped[str] = mapped_column(
        String(32), nullable=False, default="", server_default=""
    )
    retention_last: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    allow_keep_newest_only: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    removal_delay_seconds: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    # jitterSeconds: fires shift by a fixed offset in [0, jitter_seconds] (core.schedule).
    jitter_seconds: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    notify_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    # A failure, overdue or auto-pause notice went out and no success since: the next
    # success sends "recovered". overdue_notified_at: one overdue notice per episode.
    alerting: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    overdue_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Scheduled verification (docs/restore.md): verifyCronString (canonical; None = never),
    # verifySampleRate (None = BACKTOR_VERIFY_SAMPLE_RATE) and the next verifyCron fire,
    # which the pass that acts on it moves on in the transaction claiming the backups.
    verify_cron_string: Mapped[str | None] = mapped_column(String(256), nullable=True)
    verify_sample_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_verify_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)

    def __repr__(self) -> str:  # workerConfig is a secret: never in a repr, log line or trace
        return f"BackupSpec(id={self.id!r}, name={self.name!r})"


class Backup(Base):
    """One backup taken for a spec, from its start through its removal."""

    __tablename__ = "backup"
    __table_args__ = (
        Index("ix_backup_spec_id_status", "spec_id", "status"),
        # One no-data record (FAILED, TIMED_OUT) per create_backup run, however many
        # passes see it end at once.
        Index(
            "uq_backup_no_data_run",
            "create_workflow_id",
            unique=True,
            postgresql_where=text("backup_task_id IS NULL"),
            sqlite_where=text("backup_task_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("backup_spec.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    data_id: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    size_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    tags: Mapped[str] = mapped_column(String(128), nullable=False, default="", server_default="")
    pinned: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    create_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    backup_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    remove_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remove_attempts: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The removal outbox (scheduling.removals): when to try again, and a start attempt's claim.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the scheduler last looked inside its remove_backup for a stalled record_removal.
    remove_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The remove_backup run whose own record_removal recorded this backup REMOVED, until the
    # scheduler sees that run end (its worker may die before reporting: the run is followed,
    # and repaired, until then; a purge waits for it). NULL otherwise.
    removed_by_open_run: Mapped[str | None] = mapped_column(String(64), nullable=True)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # EXPIRING: its remove_backup starts at expires_at unless a pin or a plan keeps it.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Restore and verify (backtor.scheduling.restores, docs/restore.md). What the backup
    # task output: the stored file's SHA-256 and, for postgres, {"schema.table": rows} (JSON).
    checksum: Mapped[str | None] = mapped_column(String(80), nullable=True)
    row_counts: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The last finished verification: VERIFIED, FAILED or NEVER, when and what it found.
    verify_status: Mapped[str] = mapped_column(
        String(16), nullable=False, default="NEVER", server_default="NEVER"
    )
    last_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    verify_details: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The last verify_backup / restore_backup run: STARTING (its start in flight since
    # *_requested_at), RUNNING, then how it ended. STARTING and RUNNING hold off removal.
    verify_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    verify_run_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    verify_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    restore_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    restore_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    restore_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    restore_details: Mapped[str | None] = mapped_column(String(500), nullable=True)

    @property
    def tag_list(self) -> list[str]:
        """The tier names in `tags` (stored comma-joined)."""
        return [tag for tag in self.tags.split(",") if tag]

    def __repr__(self) -> str:
        return f"Backup(id={self.id!r}, spec_id={self.spec_id!r}, status={self.status!r})"


# -- the scheduler's ledger -------------------------------------------------------------
# One row per fire (the outbox) and the scheduler's own state. The unique (spec, fire time)
# key makes the database the judge of "at most once": a fire is written before its workflow
# starts, claimed before each attempt, and carries its id into the workflow's input, so a
# crashed attempt is found again in Conductor instead of repeated.


class FireStatus(StrEnum):
    PENDING = "PENDING"  # written, not started yet (or an attempt crashed)
    STARTED = "STARTED"  # a create_backup workflow runs or ran for it
    SKIPPED = "SKIPPED"  # never started: see skip_reason


class SkipReason(StrEnum):
    RUNNING = "running"  # a create_backup for the spec was still RUNNING
    MISFIRE = "misfire"  # passed over while the scheduler was late or down
    CONDUCTOR_UNAVAILABLE = "conductor_unavailable"  # a manual trigger that could not start
    INVALID_SCHEDULE = "invalid_schedule"  # the stored cron or zone can no longer be evaluated
    # Not a skip: the mark of a PENDING fire that waits for the spec's running create_backup
    # to end (overlapPolicy bufferOne); never on a SKIPPED fire (backtor.scheduling.fires).
    BUFFERED = "buffered"


# The predicate of the unique key on scheduled fire times (an upsert names it to match).
SCHEDULED_ONLY = "NOT manual"


class Fire(Base):
    __tablename__ = "fire"
    __table_args__ = (
        # One row per scheduled fire time of a spec. Manual fires ("back up now") are not
        # fire times: one written at the very instant of a fire time must not take its key.
        Index(
            "uq_fire_scheduled_time",
            "spec_id",
            "scheduled_at",
            unique=True,
            postgresql_where=text(SCHEDULED_ONLY),
            sqlite_where=text(SCHEDULED_ONLY),
        ),
        Index("ix_fire_status_outcome", "status", "outcome"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("backup_spec.id", ondelete="CASCADE"), nullable=False
    )
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    manual: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    skip_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The create_backup workflow's end state once reconciled: COMPLETED, FAILED, TIMED_OUT,
    # TERMINATED; NULL while it runs (or before it starts).
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the scheduler last looked inside the run for a stalled own task (scheduling.stalls).
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return f"Fire(id={self.id!r}, spec_id={self.spec_id!r}, status={self.status!r})"


SCHEDULER_STATE_ID = 1


def shard_state_id(shard: int) -> int:
    """The scheduler_state row of tick shard `shard`: shard 0 keeps SCHEDULER_STATE_ID."""
    return SCHEDULER_STATE_ID + shard


class SchedulerState(Base):
    """One row: the tick workflow Backtor keeps alive, its heartbeat and the watchdog lease."""

    __tablename__ = "scheduler_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tick_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The pass lease: one scheduler pass at a time, whichever replica Conductor hands the
    # tick to (backtor.scheduling.tick).
    pass_holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    pass_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The number of tick shards in force (row SCHEDULER_STATE_ID only; the watchdog writes
    # it). Shard i > 0 keeps its pass lease and heartbeat in row shard_state_id(i).
    tick_shards: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")


# -- metrics shared by every process ----------------------------------------------------
# Counters that must add up across API and worker replicas live in the database: each is
# incremented in the transaction of the event it counts (backtor.db.counters) and read by
# the API's /metrics at scrape time (backtor.observability.collector).


class MetricCounter(Base):
    """One counter series: `name` (the family, without `_total`), `backup`, one `label`.

    `backup` and `label` are '' when a family has no such label. A spec's series go with
    the spec (ON DELETE CASCADE on spec_id); global ones have no spec_id.
    """

    __tablename__ = "metric_counter"
    __table_args__ = (UniqueConstraint("name", "backup", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    backup: Mapped[str] = mapped_column(String(128), nullable=False, server_default="")
    label: Mapped[str] = mapped_column(String(64), nullable=False, server_default="")
    spec_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("backup_spec.id", ondelete="CASCADE"), nullable=True, index=True
    )
    value: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))


# /metrics counts each spec's held backups per status: this index lets it read only the held
# rows (REMOVED history grows without bound). The partial one finds each spec's newest
# success in one probe (PostgreSQL reads it without touching the table).
Index("ix_backup_status_spec_id", Backup.status, Backup.spec_id)
_SUCCEEDED = "status IN ('COMPLETED', 'REMOVING', 'REMOVE_FAILED')"
Index(
    "ix_backup_newest_success",
    Backup.spec_id,
    Backup.end_time,
    Backup.id,
    postgresql_where=text(_SUCCEEDED),
    sqlite_where=text(_SUCCEEDED),
    postgresql_include=["start_time", "size_mb"],
)
# A spec's backups newest first, the read routes' order, a page without a sort (migration
# 0012; read backwards). And on PostgreSQL the spec list's order, code points (`COLLATE
# "C"`), which the unique index on `name` (the database's collation) cannot serve; SQLite's
# own order is code point order.
Index("ix_backup_spec_scheduled", Backup.spec_id, Backup.scheduled_at, Backup.id)
Index("ix_backup_spec_name_c", BackupSpec.name.collate("C")).ddl_if(dialect="postgresql")
# The backups with a restore or verification under way and the specs being purged, looked
# for by every pass (scheduling.restores.follow_runs, removals; migration 0013): a few
# rows, not whole tables.
Index(
    "ix_backup_spec_deleting",
    BackupSpec.id,
    postgresql_where=text("deleting IS true"),  # as the pass asks, so each planner matches it
    sqlite_where=text("deleting IS 1"),
)
_RESTORE_OPEN = "restore_status IN ('STARTING', 'RUNNING')"
_VERIFY_OPEN = "verify_run_status IN ('STARTING', 'RUNNING')"
Index(
    "ix_backup_removed_by_open_run",
    Backup.id,
    postgresql_where=text("removed_by_open_run IS NOT NULL"),  # migration 0014
    sqlite_where=text("removed_by_open_run IS NOT NULL"),
)
Index(
    "ix_backup_restore_open",
    Backup.id,
    postgresql_where=text(_RESTORE_OPEN),
    sqlite_where=text(_RESTORE_OPEN),
)
Index(
    "ix_backup_verify_open",
    Backup.id,
    postgresql_where=text(_VERIFY_OPEN),
    sqlite_where=text(_VERIFY_OPEN),
)
# Each spec's newest verification, read on every scrape (migration 0011); never-verified
# backups, nearly all of them, stay out of it.
_VERIFIED = "verify_status <> 'NEVER'"
Index(
    "ix_backup_verified",
    Backup.spec_id,
    Backup.verify_status,
    Backup.end_time,
    postgresql_where=text(_VERIFIED),
    sqlite_where=text(_VERIFIED),
    postgresql_include=["status", "last_verified_at"],
)


class NoticeStatus(StrEnum):
    PENDING = "PENDING"  # written with its event, no backtor_notify workflow yet
    STARTED = "STARTED"  # a backtor_notify workflow delivers it (and retries)
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"  # every retry failed; counted in backtor_notify_failures_total


class Notice(Base):
    """The notification outbox: written in the transaction of the event it reports."""

    __tablename__ = "notice"
    __table_args__ = (Index("ix_notice_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    spec_name: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[str] = mapped_column(Text, nullable=False, default="{}", server_default="{}")
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    notify_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    def __repr__(self) -> str:  # the URL may carry a token: never in a repr
        return f"Notice(id={self.id!r}, kind={self.kind!r}, status={self.status!r})"
