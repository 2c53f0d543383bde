"""The dialect's own INSERT, for insert-or-ignore and upserts (`ON CONFLICT ...`).

PostgreSQL and SQLite both have `ON CONFLICT DO NOTHING` / `DO UPDATE`; SQLAlchemy spells
them on each dialect's Insert. One helper picks it from the session's bind.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

DialectInsert = postgresql.Insert | sqlite.Insert


def dialect_insert(session: Session, entity: Any) -> DialectInsert:
    """`INSERT INTO entity` for the session's database, with its `on_conflict_*` methods."""
    return insert_for(session.get_bind().dialect.name, entity)


def insert_for(dialect: str, entity: Any) -> DialectInsert:
    """`INSERT INTO entity` for the dialect named (for statements built once per dialect)."""
    if dialect == "postgresql":
        return postgresql.insert(entity)
    return sqlite.insert(entity)
