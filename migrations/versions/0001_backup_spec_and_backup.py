"""backup_spec and backup tables

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "backup_spec",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("from_date", _utc(), nullable=True),
        sa.Column("to_date", _utc(), nullable=True),
        sa.Column("cron_string", sa.String(length=256), nullable=False),
        sa.Column("cron_derived", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("worker_config", sa.Text(), nullable=True),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column(
            "misfire_grace_seconds", sa.Integer(), server_default=sa.text("3600"), nullable=False
        ),
        sa.Column("retention_minutely", sa.String(length=32), nullable=False),
        sa.Column("retention_hourly", sa.String(length=32), nullable=False),
        sa.Column("retention_daily", sa.String(length=32), nullable=False),
        sa.Column("retention_weekly", sa.String(length=32), nullable=False),
        sa.Column("retention_monthly", sa.String(length=32), nullable=False),
        sa.Column("retention_yearly", sa.String(length=32), nullable=False),
        sa.Column("running_create_workflow_id", sa.String(length=64), nullable=True),
        sa.Column("last_update", _utc(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("next_fire_at", _utc(), nullable=True),
        sa.Column("last_skip_at", _utc(), nullable=True),
        sa.Column("last_skip_reason", sa.String(length=64), nullable=True),
        sa.Column("deleting", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_backup_spec"),
        sa.UniqueConstraint("name", name="uq_backup_spec_name"),
    )
    op.create_index("ix_backup_spec_next_fire_at", "backup_spec", ["next_fire_at"])

    op.create_table(
        "backup",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("data_id", sa.String(length=1024), nullable=True),
        sa.Column("scheduled_at", _utc(), nullable=False),
        sa.Column("start_time", _utc(), nullable=True),
        sa.Column("end_time", _utc(), nullable=True),
        sa.Column("size_mb", sa.Float(), nullable=True),
        sa.Column("tags", sa.String(length=128), server_default="", nullable=False),
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("create_workflow_id", sa.String(length=64), nullable=True),
        sa.Column("backup_task_id", sa.String(length=64), nullable=True),
        sa.Column("remove_workflow_id", sa.String(length=64), nullable=True),
        sa.Column("remove_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["spec_id"],
            ["backup_spec.id"],
            name="fk_backup_spec_id_backup_spec",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_backup"),
        sa.UniqueConstraint("backup_task_id", name="uq_backup_backup_task_id"),
    )
    op.create_index("ix_backup_spec_id_status", "backup", ["spec_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_backup_spec_id_status", table_name="backup")
    op.drop_table("backup")
    op.drop_index("ix_backup_spec_next_fire_at", table_name="backup_spec")
    op.drop_table("backup_spec")
