"""What `backtor api`, `worker` and `run` do with the database before they serve.

The embedded default (SQLite) migrates itself: the user never set that database up, so it
should simply be ready. A server database (PostgreSQL) is migrated at start only with
BACKTOR_MIGRATE_ON_START=1; otherwise `backtor migrate` is the operator's step, and a
schema that is behind is reported in those words, with that command.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from backtor.core.errors import BacktorError
from backtor.db.engine import make_engine, mask_url
from backtor.db.migrate import SchemaNotReady, check_schema, migrate_at_start
from backtor.runtime.settings import Settings

log = logging.getLogger(__name__)

# How often a worker waiting for `backtor migrate` looks again, and repeats its log line.
SCHEMA_POLL_SECONDS = 2.0
SCHEMA_LOG_EVERY_SECONDS = 60.0


class DatabaseStartError(BacktorError):
    """The database could not be prepared at start; the message names the cause."""


def migrates_at_start(settings: Settings) -> bool:
    """SQLite always (Backtor's own file); another database with BACKTOR_MIGRATE_ON_START."""
    return settings.migrate_on_start or settings.database_url.startswith("sqlite")


def prepare_database(settings: Settings) -> None:
    """Migrate when this process should; DatabaseStartError when that fails."""
    if not migrates_at_start(settings):
        return
    try:
        engine = make_engine(settings.database_url)
        try:
            migrate_at_start(engine, settings.database_url)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as error:
        raise DatabaseStartError(
            f"cannot migrate {mask_url(settings.database_url)}: {describe_driver_error(error)}"
        ) from None


def wait_for_schema(engine: Engine, stop: threading.Event) -> bool:
    """Block until the schema is at head (True), or `stop` is set (False).

    A worker must not run the scheduler on a schema it does not know; it waits for the
    operator's `backtor migrate` instead of failing, saying so every minute.
    """
    last_said = float("-inf")
    waited = 0.0
    while not stop.is_set():
        try:
            with engine.connect() as connection:
                check_schema(connection)
            return True
        except SchemaNotReady as problem:
            message = problem.message
        except SQLAlchemyError as error:
            message = f"the database cannot be reached: {describe_driver_error(error)}"
        if waited - last_said >= SCHEMA_LOG_EVERY_SECONDS:
            log.error("%s; waiting for it", message)
            last_said = waited
        stop.wait(SCHEMA_POLL_SECONDS)
        waited += SCHEMA_POLL_SECONDS
    return False


def describe_driver_error(error: SQLAlchemyError | OSError) -> str:
    """The driver's (or the OS's) first line: its class and what it said, no parameter."""
    original = getattr(error, "orig", None) or error
    said = str(original).strip().splitlines()
    return f"{type(original).__name__}: {said[0]}" if said else type(original).__name__
