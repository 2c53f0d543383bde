"""The scheduler's ledger: one row per fire (the outbox) and the scheduler's own state.

The unique (spec, fire time) key makes the database the judge of "at most once": a fire is
written before its workflow starts, claimed before each attempt, and carries its id into
the workflow's input, so a crashed attempt is found again in Conductor instead of repeated.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from backtor.db.models import Base
from backtor.db.types import UTCDateTime


class FireStatus(StrEnum):
    PENDING = "PENDING"  # written, not started yet (or an attempt crashed)
    STARTED = "STARTED"  # a create_backup workflow runs or ran for it
    SKIPPED = "SKIPPED"  # never started: see skip_reason


class SkipReason(StrEnum):
    RUNNING = "running"  # a create_backup for the spec was still RUNNING
    MISFIRE = "misfire"  # passed over while the scheduler was late or down
    CONDUCTOR_UNAVAILABLE = "conductor_unavailable"  # a manual trigger that could not start


class Fire(Base):
    __tablename__ = "fire"
    __table_args__ = (
        UniqueConstraint("spec_id", "scheduled_at"),
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

    def __repr__(self) -> str:
        return f"Fire(id={self.id!r}, spec_id={self.spec_id!r}, status={self.status!r})"


SCHEDULER_STATE_ID = 1


class SchedulerState(Base):
    """One row: the tick workflow Backtor keeps alive, its heartbeat and the watchdog lease."""

    __tablename__ = "scheduler_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tick_workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
