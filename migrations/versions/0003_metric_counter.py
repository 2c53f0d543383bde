"""metric_counter (cross-process counters for /metrics), indexes for /metrics' backup figures

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Backups that hold data that was taken successfully (observability reads the newest).
SUCCEEDED = "status IN ('COMPLETED', 'REMOVING', 'REMOVE_FAILED')"


def upgrade() -> None:
    op.create_table(
        "metric_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("backup", sa.String(length=128), server_default="", nullable=False),
        sa.Column("label", sa.String(length=64), server_default="", nullable=False),
        sa.Column("spec_id", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["spec_id"],
            ["backup_spec.id"],
            name=op.f("fk_metric_counter_spec_id_backup_spec"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_counter")),
        sa.UniqueConstraint(
            "name", "backup", "label", name=op.f("uq_metric_counter_name_backup_label")
        ),
    )
    op.create_index(op.f("ix_metric_counter_spec_id"), "metric_counter", ["spec_id"])
    op.create_index("ix_backup_status_spec_id", "backup", ["status", "spec_id"])
    op.create_index(
        "ix_backup_newest_success",
        "backup",
        ["spec_id", "end_time", "id"],
        postgresql_where=sa.text(SUCCEEDED),
        sqlite_where=sa.text(SUCCEEDED),
        postgresql_include=["start_time", "size_mb"],
    )


def downgrade() -> None:
    op.drop_index("ix_backup_newest_success", table_name="backup")
    op.drop_index("ix_backup_status_spec_id", table_name="backup")
    op.drop_index(op.f("ix_metric_counter_spec_id"), table_name="metric_counter")
    op.drop_table("metric_counter")
