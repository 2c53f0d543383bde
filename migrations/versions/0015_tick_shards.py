"""scheduler_state.tick_shards: the number of tick shards in force (BACKTOR_TICK_SHARDS)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_state") as table:
        table.add_column(sa.Column("tick_shards", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    # Rows of shards > 0 mean nothing to an older Backtor: only row 1 stays.
    op.execute(sa.text("DELETE FROM scheduler_state WHERE id <> 1"))
    with op.batch_alter_table("scheduler_state") as table:
        table.drop_column("tick_shards")
