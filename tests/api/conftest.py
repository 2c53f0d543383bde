"""Fixtures for the API tests: a migrated database, an app on it, and direct row access."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from backtor.api.app import create_app
from backtor.conductor.http import ConductorClient
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import Backup, BackupSpec
from backtor.runtime.settings import Settings
from tests.support.net import free_port

with warnings.catch_warnings():
    # Starlette suggests httpx2; the TestClient works the same with httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def migrated_url(database_url: str) -> str:
    """A fresh database (PostgreSQL or SQLite) at the newest migration."""
    upgrade_to_head(database_url)
    return database_url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def dead_conductor() -> Iterator[ConductorClient]:
    """A client for a port nothing listens on: every call is ConductorUnavailable."""
    client = ConductorClient(f"http://127.0.0.1:{free_port()}/api", timeout=2)
    yield client
    client.close()


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(
    migrated_url: str,
    engine: Engine,
    dead_conductor: ConductorClient,
) -> Iterator[MakeClient]:
    """Build a TestClient; keywords override the conductor, the token or other settings."""
    clients: list[TestClient] = []

    def make(
        *,
        conductor: ConductorClient | None = None,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> TestClient:
        variables = {"DATABASE_URL": migrated_url, **(env or {})}
        if token is not None:
            variables["BACKTOR_API_TOKEN"] = token
        app = create_app(
            Settings.from_env(variables), engine=engine, conductor=conductor or dead_conductor
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as session:
        yield session


AddBackup = Callable[..., int]


@pytest.fixture
def add_backup(engine: Engine) -> AddBackup:
    """Insert a backup row for a spec by name, as the scheduling worker will; returns its id."""
    sessions = make_session_factory(engine)

    def add(spec_name: str, status: str = "COMPLETED", **fields: Any) -> int:
        with sessions() as session:
            spec = session.query(BackupSpec).filter_by(name=spec_name).one()
            values: dict[str, Any] = {
                "scheduled_at": datetime(2024, 1, 1, tzinfo=UTC),
                "data_id": f"data-{spec_name}-{status}",
            }
            values.update(fields)
            backup = Backup(spec_id=spec.id, status=status, **values)
            session.add(backup)
            session.commit()
            return backup.id

    return add
