"""`backtor api`: run the API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from backtor.db.engine import mask_url
from backtor.observability.logs import configure_logging
from backtor.runtime.settings import Settings

log = logging.getLogger(__name__)


def _configure_logging(level: str, fmt: str) -> None:
    """Backtor's text or JSON lines; uvicorn's own loggers go through them too."""
    configure_logging(level, fmt)
    # SQLAlchemy logs every statement at INFO; that is noise here, not an audit trail.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def serve(host: str | None = None, port: int | None = None) -> int:
    """Serve until stopped; migrations run first only with BACKTOR_MIGRATE_ON_START=1.

    `host` and `port` (the command line) win over HOST and PORT; a bad setting raises
    SettingError before anything starts (the CLI reports it).
    """
    settings = Settings.from_env()
    _configure_logging(settings.log_level, settings.log_format)
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    if settings.migrate_on_start:
        from backtor.db.migrate import upgrade_to_head

        upgrade_to_head(settings.database_url)
    from backtor.api.app import create_app

    app = create_app(settings)
    log.info("serving the API on %s:%d, database %s", host, port, mask_url(settings.database_url))
    # log_config=None: uvicorn keeps its hands off logging, its lines use the format above.
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), log_config=None)
    return 0
