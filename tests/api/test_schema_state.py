"""A database whose schema is not the one Backtor needs: 503, in words that name the cause.

Not "the database cannot be reached": it answers. The message names the revisions and the
command to run, and the log says the same, once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from backtor.api.app import create_app
from backtor.conductor.http import ConductorClient
from backtor.db.migrate import alembic_config, downgrade_to, head_revisions, upgrade_to_head
from backtor.runtime.settings import Settings

SPEC = {"name": "db1"}
NO_SCHEMA = "the database has no Backtor schema: run `backtor migrate`"


def _head() -> str:
    (head,) = head_revisions()
    return head


def _previous() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_revision(_head())
    assert isinstance(revision.down_revision, str)
    return revision.down_revision


@contextmanager
def _client(database_url: str, conductor: ConductorClient) -> Iterator[TestClient]:
    app = create_app(Settings.from_env({"DATABASE_URL": database_url}), conductor=conductor)
    with TestClient(app) as client:
        yield client


def test_a_schema_one_migration_behind_names_both_revisions(
    database_url: str, dead_conductor: ConductorClient, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_to_head(database_url)
    downgrade_to(_previous(), database_url)
    message = f"the schema is at {_previous()}, Backtor needs {_head()}: run `backtor migrate`"
    caplog.set_level(logging.ERROR, logger="backtor.db.migrate")
    with _client(database_url, dead_conductor) as client:
        for answer in (
            client.get("/backup"),
            client.post("/backup", json=SPEC),
            client.get("/backup/db1/materialized"),
            client.get("/ready"),
        ):
            assert answer.status_code == 503
            assert answer.json() == {"message": message, "field": None}
        assert [r.getMessage() for r in caplog.records] == [message]  # said once, not per request

        upgrade_to_head(database_url)  # the operator's step: no restart needed
        assert client.post("/backup", json=SPEC).status_code == 201


def test_a_database_without_tables_says_so(
    database_url: str, dead_conductor: ConductorClient
) -> None:
    with _client(database_url, dead_conductor) as client:
        answer = client.post("/backup", json=SPEC)
        assert answer.status_code == 503
        assert answer.json() == {"message": NO_SCHEMA, "field": None}


def test_tables_dropped_under_a_running_api_are_named_as_the_schema(
    database_url: str, dead_conductor: ConductorClient
) -> None:
    """The gate remembers a schema at head; a table gone later is found by the error handler."""
    upgrade_to_head(database_url)
    with _client(database_url, dead_conductor) as client:
        assert client.post("/backup", json=SPEC).status_code == 201
        downgrade_to("base", database_url)
        answer = client.get("/backup/db1")
        assert answer.status_code == 503
        assert answer.json() == {"message": NO_SCHEMA, "field": None}
