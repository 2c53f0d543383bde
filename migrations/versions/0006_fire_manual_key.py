"""fire: the (spec, fire time) key covers scheduled fires only, not manual ones

A manual fire written at the very instant of a scheduled fire time took that time's key,
and the scheduled fire then got no row at all. The unique constraint becomes a partial
unique index over scheduled fires (manual = false).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEDULED_ONLY = "NOT manual"
OLD_KEY = "uq_fire_spec_id_scheduled_at"
NEW_KEY = "uq_fire_scheduled_time"


def upgrade() -> None:
    with op.batch_alter_table("fire") as table:
        table.drop_constraint(OLD_KEY, type_="unique")
    op.create_index(
        NEW_KEY,
        "fire",
        ["spec_id", "scheduled_at"],
        unique=True,
        postgresql_where=sa.text(SCHEDULED_ONLY),
        sqlite_where=sa.text(SCHEDULED_ONLY),
    )


def downgrade() -> None:
    op.drop_index(NEW_KEY, table_name="fire")
    _separate_manual_fires()
    with op.batch_alter_table("fire") as table:
        table.create_unique_constraint(OLD_KEY, ["spec_id", "scheduled_at"])


def _separate_manual_fires() -> None:
    """Move each manual fire that shares its spec and time with another fire on by 1 µs.

    The old key covers every fire: without this, the constraint cannot be created again.
    Done in Python so that the arithmetic is the same on PostgreSQL and SQLite.
    """
    fire = sa.table(
        "fire",
        sa.column("id", sa.Integer()),
        sa.column("spec_id", sa.Integer()),
        sa.column("scheduled_at", sa.DateTime(timezone=True)),
        sa.column("manual", sa.Boolean()),
    )
    other = fire.alias("other")
    clash = sa.exists().where(
        other.c.spec_id == fire.c.spec_id,
        other.c.scheduled_at == fire.c.scheduled_at,
        sa.or_(other.c.manual.is_(False), other.c.id < fire.c.id),
    )
    connection = op.get_bind()
    while True:
        rows = connection.execute(
            sa.select(fire.c.id, fire.c.scheduled_at).where(fire.c.manual.is_(True), clash)
        ).all()
        if not rows:
            return
        for fire_id, moment in rows:
            connection.execute(
                sa.update(fire)
                .where(fire.c.id == fire_id)
                .values(scheduled_at=moment + timedelta(microseconds=1))
            )
