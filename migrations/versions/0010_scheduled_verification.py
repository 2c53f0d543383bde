"""Scheduled verification (issue 11): a spec's verifyCronString, verifySampleRate and the
next verifyCron fire

Every new column is NULL on existing specs: no scheduled verification until a PUT sets one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backup_spec") as table:
        table.add_column(sa.Column("verify_cron_string", sa.String(256), nullable=True))
        table.add_column(sa.Column("verify_sample_rate", sa.Float, nullable=True))
        table.add_column(sa.Column("next_verify_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_backup_spec_next_verify_at", "backup_spec", ["next_verify_at"])


def downgrade() -> None:
    op.drop_index("ix_backup_spec_next_verify_at", table_name="backup_spec")
    with op.batch_alter_table("backup_spec") as table:
        table.drop_column("next_verify_at")
        table.drop_column("verify_sample_rate")
        table.drop_column("verify_cron_string")
