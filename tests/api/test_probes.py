"""GET /health and GET /ready."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from backtor.api.app import create_app
from backtor.conductor.http import ConductorClient
from backtor.db.migrate import downgrade_to, head_revisions, upgrade_to_head
from backtor.runtime.settings import Settings
from tests.support.net import free_port

pytestmark = pytest.mark.integration


def _client(database_url: str, conductor: ConductorClient) -> TestClient:
    return TestClient(
        create_app(Settings.from_env({"DATABASE_URL": database_url}), conductor=conductor)
    )


def test_ready_follows_the_migrations(database_url: str, dead_conductor: ConductorClient) -> None:
    with _client(database_url, dead_conductor) as client:
        assert client.get("/health").json() == {"status": "ok"}
        not_migrated = client.get("/ready")
        assert not_migrated.status_code == 503
        assert "backtor migrate" in not_migrated.json()["message"]

        upgrade_to_head(database_url)
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "revision": sorted(head_revisions())}

        downgrade_to("base", database_url)
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200


def test_ready_is_503_when_the_database_is_unreachable(dead_conductor: ConductorClient) -> None:
    url = f"postgresql+psycopg://backtor:backtor@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
    with _client(url, dead_conductor) as client:
        answer = client.get("/ready")
        assert answer.status_code == 503
        assert answer.json() == {"message": "the database cannot be reached", "field": None}
        assert client.get("/health").status_code == 200
        listing = client.get("/backup")  # a request that needs the database: retry later
        assert listing.status_code == 503
        assert "backtor:backtor" not in listing.text
