"""A spec's jitter (jitterSeconds): every fire shifted by a fixed offset from its name

The server default 0 keeps today's fire times.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backup_spec") as table:
        table.add_column(
            sa.Column("jitter_seconds", sa.Integer, nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("backup_spec") as table:
        table.drop_column("jitter_seconds")
