"""backup.remove_checked_at and backup.removed_by_open_run: following a remove_backup run
until it ends, so that a dead worker's record_removal is repaired

remove_checked_at: when the scheduler last looked inside a long-running remove_backup for a
stalled record_removal. removed_by_open_run: the run whose own record_removal recorded the
backup REMOVED, until the scheduler sees it end; a partial index holds those few rows.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_RUN = "removed_by_open_run IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("backup") as table:
        table.add_column(sa.Column("remove_checked_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("removed_by_open_run", sa.String(64), nullable=True))
    op.create_index(
        "ix_backup_removed_by_open_run",
        "backup",
        ["id"],
        postgresql_where=sa.text(OPEN_RUN),
        sqlite_where=sa.text(OPEN_RUN),
    )


def downgrade() -> None:
    op.drop_index("ix_backup_removed_by_open_run", table_name="backup")
    with op.batch_alter_table("backup") as table:
        table.drop_column("removed_by_open_run")
        table.drop_column("remove_checked_at")
