"""The real PostgreSQL server stores and returns a row through SQLAlchemy and psycopg 3."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select

pytestmark = pytest.mark.integration


def test_write_and_read_a_row(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    assert engine.dialect.name == "postgresql"
    assert engine.dialect.driver == "psycopg"
    metadata = MetaData()
    notes = Table(
        "notes",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("body", String(200), nullable=False),
    )
    metadata.create_all(engine)
    tricky = "x'; DROP TABLE notes; --"
    with engine.begin() as conn:
        conn.execute(insert(notes), [{"body": "first"}, {"body": tricky}])
    with engine.connect() as conn:
        rows = conn.execute(select(notes.c.body).order_by(notes.c.id)).scalars().all()
    assert rows == ["first", tricky]
    engine.dispose()
