"""Apply and inspect the Alembic migrations shipped as `backtor.migrations`.

The script directory is found through importlib.resources, so `backtor migrate` works from
any working directory and from an installed wheel, with no alembic.ini.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import column, inspect, select, table
from sqlalchemy.engine import Connection, Engine

from backtor.db.engine import mask_url
from backtor.runtime.settings import Settings

log = logging.getLogger(__name__)


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
    log.info("applying migrations to %s", mask_url(database_url))
    command.upgrade(alembic_config(database_url), "head")
    log.info("database is at revision %s", ", ".join(sorted(head_revisions())))


def downgrade_to(revision: str, database_url: str) -> None:
    """Downgrade to `revision` ("base" drops everything Backtor created)."""
    command.downgrade(alembic_config(database_url), revision)


@cache
def head_revisions() -> frozenset[str]:
    """The head revision(s) of the shipped script directory."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


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


def _ensure_logging(level: str) -> None:
    """`backtor migrate` should say what it did, unless the caller set up logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
