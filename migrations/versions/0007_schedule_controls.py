"""Schedule and retention controls: overlap policy, pause reason, auto-pause, keep-within,
keep-last, removal delay (backup.expires_at), and the notification outbox (notice)

Every new column has a server default that keeps today's behaviour.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPEC_COLUMNS = (
    "overlap_policy",
    "paused_reason",
    "auto_pause_after_failures",
    "consecutive_failures",
    "retention_keep_within",
    "retention_last",
    "allow_keep_newest_only",
    "removal_delay_seconds",
    "notify_url",
    "alerting",
    "overdue_notified_at",
)


def upgrade() -> None:
    zero = sa.text("0")
    with op.batch_alter_table("backup_spec") as table:
        table.add_column(
            sa.Column("overlap_policy", sa.String(16), nullable=False, server_default="skip")
        )
        table.add_column(sa.Column("paused_reason", sa.String(500), nullable=True))
        table.add_column(
            sa.Column("auto_pause_after_failures", sa.Integer, nullable=False, server_default=zero)
        )
        table.add_column(
            sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default=zero)
        )
        table.add_column(
            sa.Column("retention_keep_within", sa.String(32), nullable=False, server_default="")
        )
        table.add_column(
            sa.Column("retention_last", sa.Integer, nullable=False, server_default=zero)
        )
        table.add_column(
            sa.Column(
                "allow_keep_newest_only", sa.Boolean, nullable=False, server_default=sa.false()
            )
        )
        table.add_column(
            sa.Column("removal_delay_seconds", sa.Integer, nullable=False, server_default=zero)
        )
        table.add_column(sa.Column("notify_url", sa.String(2048), nullable=True))
        table.add_column(
            sa.Column("alerting", sa.Boolean, nullable=False, server_default=sa.false())
        )
        table.add_column(
            sa.Column("overdue_notified_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("backup") as table:
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "notice",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("spec_name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("workflow_id", sa.String(64), nullable=True),
        sa.Column("details", sa.Text, nullable=False, server_default="{}"),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("notify_workflow_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notice"),
        sa.UniqueConstraint("key", name="uq_notice_key"),
    )
    op.create_index("ix_notice_status", "notice", ["status"])


def downgrade() -> None:
    op.drop_index("ix_notice_status", table_name="notice")
    op.drop_table("notice")
    with op.batch_alter_table("backup") as table:
        table.drop_column("expires_at")
    with op.batch_alter_table("backup_spec") as table:
        for column in reversed(SPEC_COLUMNS):
            table.drop_column(column)
