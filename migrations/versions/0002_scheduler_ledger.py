"""the scheduler's ledger: fire, scheduler_state, removal retry columns on backup

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fire",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec_id", sa.Integer(), nullable=False),
        sa.Column("scheduled_at", _utc(), nullable=False),
        sa.Column("manual", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("skip_reason", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claimed_until", _utc(), nullable=True),
        sa.Column("workflow_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["spec_id"],
            ["backup_spec.id"],
            name=op.f("fk_fire_spec_id_backup_spec"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fire")),
        sa.UniqueConstraint("spec_id", "scheduled_at", name=op.f("uq_fire_spec_id_scheduled_at")),
    )
    op.create_index("ix_fire_status_outcome", "fire", ["status", "outcome"])
    op.create_index(op.f("ix_fire_workflow_id"), "fire", ["workflow_id"])
    op.create_table(
        "scheduler_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tick_workflow_id", sa.String(length=64), nullable=True),
        sa.Column("last_tick_at", _utc(), nullable=True),
        sa.Column("lease_holder", sa.String(length=128), nullable=True),
        sa.Column("lease_until", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_state")),
    )
    # The one row every scheduler process updates (never inserts: no race on creation).
    state = sa.table("scheduler_state", sa.column("id", sa.Integer()))
    op.bulk_insert(state, [{"id": 1}])
    with op.batch_alter_table("backup") as batch:
        batch.add_column(sa.Column("next_attempt_at", _utc(), nullable=True))
        batch.add_column(sa.Column("claimed_until", _utc(), nullable=True))
        batch.add_column(sa.Column("removed_at", _utc(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backup") as batch:
        batch.drop_column("removed_at")
        batch.drop_column("claimed_until")
        batch.drop_column("next_attempt_at")
    op.drop_table("scheduler_state")
    op.drop_index(op.f("ix_fire_workflow_id"), table_name="fire")
    op.drop_index("ix_fire_status_outcome", table_name="fire")
    op.drop_table("fire")
