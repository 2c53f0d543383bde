"""Throwaway databases and row values for the benches, which fill databases straight through
SQLAlchemy rather than the API."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from backtor.core.policy import DEFAULT_POLICY

ROOT = Path(__file__).resolve().parents[2]


def create_postgres_database() -> tuple[str, str]:
    """A new database on the local server of scripts/postgres: (its URL, the admin URL)."""
    script = str(ROOT / "scripts" / "postgres")
    subprocess.run([script, "ensure"], check=True, capture_output=True)
    admin = subprocess.run(
        [script, "url", "backtor"], check=True, capture_output=True, text=True
    ).stdout.strip()
    name = f"backtor_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        # CREATE DATABASE takes no bind parameters: the name goes in as a quoted identifier.
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin.rsplit("/", 1)[0] + "/" + name, admin


def drop_postgres_database(url: str, admin: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A new database on the local server, dropped on the way out."""
    url, admin = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url, admin)


def default_retention_columns() -> dict[str, str]:
    """The seed's default policy as `backup_spec` column values."""
    return {
        f"retention_{tier.value}": value
        for tier, value in zip(
            DEFAULT_POLICY.rules, DEFAULT_POLICY.to_fields().values(), strict=True
        )
    }


def daily_spec_row(
    name: str, cron: str, next_fire_at: datetime, now: datetime
) -> dict[str, object]:
    """A `backup_spec` row as the API would store it: enabled, UTC, the default policy."""
    return {
        "name": name,
        "enabled": True,
        "cron_string": cron,
        "cron_derived": False,
        "timezone": "UTC",
        "worker_config": "{}",
        "misfire_grace_seconds": 3600,
        "last_update": now,
        "created_at": now,
        "next_fire_at": next_fire_at,
        "deleting": False,
        **default_retention_columns(),
    }
