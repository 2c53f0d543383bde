"""Restore and verify (issue 11): a backup's checksum and row counts from its backup task,
its last verification's verdict, and the restore and verify runs Backtor follows

verify_status defaults to NEVER; every other new column is NULL on existing backups.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "checksum",
    "row_counts",
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


def upgrade() -> None:
    with op.batch_alter_table("backup") as table:
        table.add_column(sa.Column("checksum", sa.String(80), nullable=True))
        table.add_column(sa.Column("row_counts", sa.Text, nullable=True))
        table.add_column(
            sa.Column("verify_status", sa.String(16), nullable=False, server_default="NEVER")
        )
        table.add_column(sa.Column("last_verified_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("verify_details", sa.String(500), nullable=True))
        table.add_column(sa.Column("verify_workflow_id", sa.String(64), nullable=True))
        table.add_column(sa.Column("verify_run_status", sa.String(16), nullable=True))
        table.add_column(
            sa.Column("verify_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        table.add_column(sa.Column("restore_workflow_id", sa.String(64), nullable=True))
        table.add_column(sa.Column("restore_status", sa.String(16), nullable=True))
        table.add_column(
            sa.Column("restore_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        table.add_column(sa.Column("restore_details", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backup") as table:
        for column in reversed(COLUMNS):
            table.drop_column(column)
