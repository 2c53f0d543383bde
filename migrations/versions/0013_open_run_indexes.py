"""Indexes on what every scheduler pass looks for: backups with a restore or a
verification under way, specs being purged

Without them those reads scan whole tables: the backups' (history included: 300 ms each,
twice a pass, at 1.1 million rows on PostgreSQL; a pass took 850 ms, 175 ms with them) and
the specs'. Only the few open runs and purges are in these partial indexes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESTORE_OPEN = "restore_status IN ('STARTING', 'RUNNING')"
VERIFY_OPEN = "verify_run_status IN ('STARTING', 'RUNNING')"
# As the pass asks (`deleting IS true`, rendered per dialect), so each planner matches it.
DELETING_PG = "deleting IS true"
DELETING_SQLITE = "deleting IS 1"


def upgrade() -> None:
    for name, where in (
        ("ix_backup_restore_open", RESTORE_OPEN),
        ("ix_backup_verify_open", VERIFY_OPEN),
    ):
        op.create_index(
            name, "backup", ["id"], postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )

    op.create_index(
        "ix_backup_spec_deleting",
        "backup_spec",
        ["id"],
        postgresql_where=sa.text(DELETING_PG),
        sqlite_where=sa.text(DELETING_SQLITE),
    )


def downgrade() -> None:
    op.drop_index("ix_backup_spec_deleting", table_name="backup_spec")
    op.drop_index("ix_backup_verify_open", table_name="backup")
    op.drop_index("ix_backup_restore_open", table_name="backup")
