"""the scheduler pass lease; one no-data record per create_backup run

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_state") as table:
        table.add_column(sa.Column("pass_holder", sa.String(length=128), nullable=True))
        table.add_column(sa.Column("pass_until", sa.DateTime(timezone=True), nullable=True))
    # Overlapping passes could write a run's no-data record twice: keep the first.
    op.execute(
        sa.text(
            "DELETE FROM backup"
            " WHERE backup_task_id IS NULL AND create_workflow_id IS NOT NULL"
            " AND id NOT IN (SELECT MIN(id) FROM backup"
            " WHERE backup_task_id IS NULL AND create_workflow_id IS NOT NULL"
            " GROUP BY create_workflow_id)"
        )
    )
    op.create_index(
        "uq_backup_no_data_run",
        "backup",
        ["create_workflow_id"],
        unique=True,
        postgresql_where=sa.text("backup_task_id IS NULL"),
        sqlite_where=sa.text("backup_task_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_backup_no_data_run", table_name="backup")
    with op.batch_alter_table("scheduler_state") as table:
        table.drop_column("pass_until")
        table.drop_column("pass_holder")
