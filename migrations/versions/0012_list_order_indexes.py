"""Indexes in the read routes' order: specs by name in code point order, a spec's backups
newest first

The spec list orders by `name COLLATE "C"` on PostgreSQL (code point order on every
database), which the unique index on `name` (the database's collation) cannot serve: each
page sorted every spec (82 ms at 100,000 specs). SQLite's own order is code point order
already. A spec's backups, newest first, were sorted from all of its rows (71-87 ms for
20,000). docs/performance.md, "API".

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_backup_spec_scheduled", "backup", ["spec_id", "scheduled_at", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute('CREATE INDEX ix_backup_spec_name_c ON backup_spec (name COLLATE "C")')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_backup_spec_name_c", table_name="backup_spec")
    op.drop_index("ix_backup_spec_scheduled", table_name="backup")
