"""SQL in names, configs and path parameters is refused or stored as data, never run."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

pytestmark = pytest.mark.integration

NASTY = [
    "x'; DROP TABLE backup_spec; --",
    'x"; DROP TABLE backup; --',
    "' OR '1'='1",
    "a%' OR name LIKE '%",
    "1; DELETE FROM backup_spec",
]


def _tables_intact(engine: Engine) -> None:
    assert {"backup_spec", "backup", "alembic_version"} <= set(inspect(engine).get_table_names())


def test_sql_in_a_name_is_refused_and_harms_nothing(client: TestClient, engine: Engine) -> None:
    assert client.post("/backup", json={"name": "keep-me"}).status_code == 201
    for name in NASTY:
        answer = client.post("/backup", json={"name": name})
        assert answer.status_code == 422
        assert answer.json()["field"] == "name"
        seed_put = client.put("/backup", json={"name": name})
        assert seed_put.status_code in (404, 422)
    _tables_intact(engine)
    assert [s["name"] for s in client.get("/backup").json()] == ["keep-me"]


def test_sql_in_worker_config_is_stored_verbatim(client: TestClient, engine: Engine) -> None:
    for index, text in enumerate(NASTY):
        answer = client.post("/backup", json={"name": f"cfg{index}", "workerConfig": text})
        assert answer.status_code == 201
        assert client.get(f"/backup/cfg{index}").json()["workerConfig"] == text
    _tables_intact(engine)
    assert len(client.get("/backup").json()) == len(NASTY)


@pytest.mark.parametrize("name", NASTY)
def test_sql_in_path_parameters_finds_nothing_and_harms_nothing(
    client: TestClient, engine: Engine, name: str
) -> None:
    assert client.post("/backup", json={"name": "keep-me"}).status_code == 201
    path = f"/backup/{quote(name, safe='')}"
    assert client.get(path).status_code == 404
    assert client.get(f"{path}/materialized").status_code == 404
    assert client.post(f"{path}/materialized").status_code == 404
    assert client.delete(path).status_code == 404
    assert client.delete(f"{path}?purge=true").status_code == 404
    put = client.put(path, json={})
    assert put.status_code == 422 and put.json()["field"] == "name"
    _tables_intact(engine)
    assert [s["name"] for s in client.get("/backup").json()] == ["keep-me"]
    assert client.get("/backup/keep-me").status_code == 200
