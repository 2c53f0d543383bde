"""`backtor api`: run the API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from backtor.api.context import SchemaCheck
from backtor.db.engine import mask_url
from backtor.db.migrate import SchemaNotReady
from backtor.observability.logs import configure_logging
from backtor.runtime.settings import Settings
from backtor.runtime.startup import describe_driver_error, prepare_database

log = logging.getLogger(__name__)


def _configure_logging(level: str, fmt: str) -> None:
    """Backtor's text or JSON lines; uvicorn's own loggers go through them too."""
    configure_logging(level, fmt)
    # SQLAlchemy logs every statement at INFO; that is noise here, not an audit trail.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def _say_schema(gate: SchemaCheck) -> None:
    """Log at start what keeps the schema from serving (the gate says it once), if anything."""
    try:
        gate.check()
    except SchemaNotReady:
        pass  # logged by the gate; requests answer 503 with the same words
    except SQLAlchemyError as error:
        log.error("the database cannot be reached: %s", describe_driver_error(error))


def serve(host: str | None = None, port: int | None = None) -> int:
    """Serve until stopped; SQLite (or BACKTOR_MIGRATE_ON_START=1) is migrated first.

    `host` and `port` (the command line) win over HOST and PORT; a bad setting raises
    SettingError before anything starts (the CLI reports it). A schema still behind is
    logged now and answered 503 with the same words until `backtor migrate` ran.
    """
    settings = Settings.from_env()
    _configure_logging(settings.log_level, settings.log_format)
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    prepare_database(settings)
    from backtor.api.app import create_app

    app = create_app(settings)
    _say_schema(app.state.schema_gate)
    log.info("serving the API on %s:%d, database %s", host, port, mask_url(settings.database_url))
    # log_config=None: uvicorn keeps its hands off logging, its lines use the format above.
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), log_config=None)
    return 0
