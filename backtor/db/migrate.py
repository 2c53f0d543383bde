"""Apply and inspect the Alembic migrations shipped as `backtor.migrations`.

The script directory is found through importlib.resources, so `backtor migrate` works from
any working directory and from an installed wheel, with no alembic.ini.

Two processes may migrate one database at once (`backtor run`, replicas started together):
on SQLite a file lock next to the database serialises whole upgrades; on PostgreSQL the
migration environment (migrations/env.py) takes a transaction-scoped advisory lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import column, inspect, select, table
from sqlalchemy.engine import Connection, Engine, make_url

from backtor.core.errors import BacktorError
from backtor.db.engine import mask_url
from backtor.runtime.settings import Settings, normalize_database_url

log = logging.getLogger(__name__)

# How long a process waits for another one's migration before it gives up.
MIGRATION_LOCK_TIMEOUT_SECONDS = 600.0
MIGRATE_COMMAND = "`backtor migrate`"


class SchemaNotReady(BacktorError):
    """The database answers, but its schema is not the one this Backtor needs."""


class MigrationLockTimeout(BacktorError):
    """Another process held the migration lock for too long (a hung migration)."""


def script_location() -> Path:
    return Path(str(resources.files("backtor.migrations")))


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config for Backtor's migrations; `database_url` defaults to the settings."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    """Bring the database up to the newest revision (what `backtor migrate` runs)."""
    if database_url is None:
        settings = Settings.from_env()
        _ensure_logging(settings.log_level)
        database_url = settings.database_url
    with migration_lock(database_url):
        log.info("applying migrations to %s", mask_url(database_url))
        command.upgrade(alembic_config(database_url), "head")
    log.info("database is at revision %s", ", ".join(sorted(head_revisions())))


def migrate_at_start(engine: Engine, database_url: str) -> None:
    """Upgrade to head unless the database is there already (then no Alembic noise).

    The check runs again under the lock, so of two processes starting together one
    migrates and the other finds the work done.
    """
    with migration_lock(database_url):
        with engine.connect() as connection:
            current = current_revisions(connection)
        if current == head_revisions():
            log.debug("database schema is at %s", ", ".join(sorted(current)))
            return
        log.info(
            "migrating %s from %s to %s",
            mask_url(database_url),
            ", ".join(sorted(current)) or "an empty schema",
            ", ".join(sorted(head_revisions())),
        )
        command.upgrade(alembic_config(database_url), "head")
    log.info("database is at revision %s", ", ".join(sorted(head_revisions())))


def downgrade_to(revision: str, database_url: str) -> None:
    """Downgrade to `revision` ("base" drops everything Backtor created)."""
    with migration_lock(database_url):
        command.downgrade(alembic_config(database_url), revision)


@cache
def head_revisions() -> frozenset[str]:
    """The head revision(s) of the shipped script directory."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


@cache
def known_revisions() -> frozenset[str]:
    """Every revision of the shipped script directory."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(r.revision for r in script.walk_revisions())


_VERSION_TABLE = table("alembic_version", column("version_num"))


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revision(s) the database is at; empty when it was never migrated.

    Read straight from Alembic's version table: readiness probes call this often, and a
    MigrationContext would log two lines per call.
    """
    if not inspect(connection).has_table("alembic_version"):
        return frozenset()
    return frozenset(
        str(v) for v in connection.execute(select(_VERSION_TABLE.c.version_num)).scalars()
    )


def is_at_head(engine: Engine) -> bool:
    with engine.connect() as connection:
        return current_revisions(connection) == head_revisions()


def schema_problem(current: frozenset[str]) -> str | None:
    """What is wrong with a schema at `current`, in words an operator can act on; None: nothing."""
    heads = head_revisions()
    if current == heads:
        return None
    needs = ", ".join(sorted(heads))
    if not current:
        return f"the database has no Backtor schema: run {MIGRATE_COMMAND}"
    at = ", ".join(sorted(current))
    if current - known_revisions():
        return (
            f"the schema is at {at}, which this Backtor does not know (it needs {needs}): "
            "the database was migrated by a newer Backtor; run that version"
        )
    return f"the schema is at {at}, Backtor needs {needs}: run {MIGRATE_COMMAND}"


def check_schema(connection: Connection) -> None:
    """Raise SchemaNotReady, naming the revisions and the command, unless at head."""
    problem = schema_problem(current_revisions(connection))
    if problem is not None:
        raise SchemaNotReady(problem)


class SchemaGate:
    """Lets requests through once the schema was seen at head; until then, checks each time.

    A schema at head is remembered (no query per request); `forget` after a database error
    that may mean the schema changed underneath. Each new problem is logged once.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ready = False
        self._logged: str | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Return when the schema is at head; SchemaNotReady or the driver's error otherwise."""
        if self._ready:
            return
        with self._engine.connect() as connection:
            problem = schema_problem(current_revisions(connection))
        with self._lock:
            if problem is None:
                self._ready = True
                self._logged = None
                return
            if problem != self._logged:
                self._logged = problem
                log.error("%s", problem)
        raise SchemaNotReady(problem)

    def forget(self) -> None:
        self._ready = False


@contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (a no-op elsewhere).

    An flock on `<database>.migrate.lock`, not on the database file: SQLite's own locks are
    POSIX locks on that file, which an flock must not be mixed with (NFS emulates one with
    the other). A whole upgrade runs under it; BEGIN IMMEDIATE alone would serialise each
    revision's transaction, not the read of the current revision that plans them.
    """
    path = sqlite_file(database_url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".migrate.lock")
    with lock_path.open("a") as handle:
        _acquire(handle.fileno(), lock_path)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire(fd: int, lock_path: Path) -> None:
    deadline = time.monotonic() + MIGRATION_LOCK_TIMEOUT_SECONDS
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
        if not waiting:
            log.info("waiting for another process's migration (lock %s)", lock_path)
            waiting = True
        if time.monotonic() > deadline:
            raise MigrationLockTimeout(
                f"another process held {lock_path} for {MIGRATION_LOCK_TIMEOUT_SECONDS:.0f} s: "
                "is a migration hung? stop it, then run `backtor migrate`"
            )
        time.sleep(0.05)


def sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite URL; None for another backend or an in-memory database."""
    url = make_url(normalize_database_url(database_url))
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _ensure_logging(level: str) -> None:
    """`backtor migrate` should say what it did, unless the caller set up logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
