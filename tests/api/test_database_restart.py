"""A PostgreSQL restart under the API: the pooled connections die with it, and the next
requests still answer (the pool's pre-ping finds a dead connection and opens a new one),
reads and writes alike. Not one 500 for the operator's restart."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.api.conftest import MakeClient

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _end_every_other_session(database_url: str) -> int:
    """What a server restart does to the API's pooled connections: ends them all."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_requests_after_the_server_ended_every_pooled_connection_answer(
    make_client: MakeClient, migrated_url: str
) -> None:
    client = make_client()
    assert client.post("/backup", json={"name": "before", "workerConfig": "{}"}).status_code == 201
    for _ in range(3):  # a few pooled connections, idle in the pool
        assert client.get("/backup/before").status_code == 200
    assert _end_every_other_session(migrated_url) >= 1
    assert client.get("/backup/before").status_code == 200
    assert client.get("/backup/before/materialized").status_code == 200
    assert client.post("/backup", json={"name": "after", "workerConfig": "{}"}).status_code == 201
    assert [spec["name"] for spec in client.get("/backup").json()] == ["after", "before"]
