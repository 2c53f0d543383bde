"""Alembic environment for Backtor: one script directory for PostgreSQL and SQLite.

The database comes, first match wins, from a connection handed over by the caller
(`config.attributes["connection"]`), a URL handed over (`config.attributes["database_url"]`),
`sqlalchemy.url` in an alembic.ini, or Backtor's own settings (DATABASE_URL / DATA_DIR).
URLs travel in attributes rather than ini options so a `%` in a password needs no escaping.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from backtor.db.engine import make_engine
from backtor.db.models import Base
from backtor.runtime.settings import Settings

config = context.config
target_metadata = Base.metadata

# Any constant will do; it only has to be the same in every Backtor process.
_PG_MIGRATION_LOCK = 0x6261636B746F72


def _database_url() -> str:
    given = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return str(given) if given else Settings.from_env().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two replicas migrating at start must not both create the same tables.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
