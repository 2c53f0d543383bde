"""Engines and sessions: one place that knows how each backend must be set up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from backtor.runtime.settings import Settings, normalize_database_url

SQLITE_BUSY_TIMEOUT_MS = 10_000
# The execution option of `Reads` connections on SQLite: a deferred BEGIN.
READS_ONLY = "backtor_reads_only"


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`, tuned for its backend.

    SQLite: the data directory is created, foreign keys are enforced (they are off by
    default, and ON DELETE CASCADE depends on them), WAL lets readers work during a write,
    and a busy timeout makes concurrent writers wait instead of failing at once.
    PostgreSQL: pre-ping, so a restarted server costs one retry, not a 500.
    Both hide bound parameters in error messages: a workerConfig must never reach a log.
    """
    url = make_url(normalize_database_url(database_url))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True
    )


def engine_from_settings(settings: Settings) -> Engine:
    return make_engine(settings.database_url)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the API answers with them)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


class Reads:
    """Connections for work that only reads (the API's read routes): the engine's pool,
    fewer waits.

    SQLite: a deferred BEGIN instead of BEGIN IMMEDIATE. The statements of one connection
    still read one snapshot (WAL), but readers no longer queue for the write lock (nor
    sleep in the busy handler while a writer or another reader holds it), and the
    scheduler's writes never wait for them.
    PostgreSQL: no transaction (autocommit) while the server's default isolation is READ
    COMMITTED, as it is unless an operator changed it: there every statement reads its own
    snapshot, in a transaction or not, so BEGIN and ROLLBACK were two round trips that
    changed nothing. Under another default level (or before the first connection told
    which) a transaction as before.
    Nothing from here may write. A plain Connection: a Session would cost more, and hold
    nothing the routes need.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._postgresql = engine.dialect.name == "postgresql"

    def _options(self) -> dict[str, Any]:
        if self._sqlite:
            return {READS_ONLY: True}
        # Set by the dialect at its first connection (absent until then).
        if self._postgresql and (
            getattr(self._engine.dialect, "default_isolation_level", None) == "READ COMMITTED"
        ):
            return {"isolation_level": "AUTOCOMMIT"}
        return {}

    def connect(self) -> Connection:
        """A connection (use it in a `with`): returned to the pool, rolled back, on exit."""
        connection = self._engine.connect()
        options = self._options()
        if options:
            connection.execution_options(**options)
        return connection


def mask_url(database_url: str) -> str:
    """The URL with its password hidden, for log lines and error messages."""
    return make_url(database_url).render_as_string(hide_password=True)


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN: see _begin
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # pysqlite would start a transaction only at the first write, so a read-then-write
        # (claim a fire, take a lease) could interleave with another writer. BEGIN
        # IMMEDIATE takes the write lock up front: SQLite's transactions become serial.
        # Connections that only read (Reads) take a snapshot instead.
        if connection.get_execution_options().get(READS_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
