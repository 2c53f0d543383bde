"""Bearer-token access, and the probes that stay open."""

from __future__ import annotations

import logging

import pytest

from backtor.api.auth import token_matches
from tests.api.conftest import MakeClient

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-\u00e9"  # non-ASCII too: the comparison works on bytes


def test_token_matching() -> None:
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer abc", "abc")
    assert not token_matches("Bearer abd", "abc")
    assert not token_matches("Bearer ", "abc")
    assert not token_matches("Basic abc", "abc")
    assert not token_matches("abc", "abc")
    assert not token_matches(None, "abc")


def test_with_a_token_every_route_but_the_probes_needs_it(make_client: MakeClient) -> None:
    client = make_client(token="s3cret")
    protected = [
        ("GET", "/backup"),
        ("POST", "/backup"),
        ("PUT", "/backup"),
        ("GET", "/backup/db1"),
        ("PUT", "/backup/db1"),
        ("DELETE", "/backup/db1"),
        ("GET", "/backup/db1/materialized"),
        ("POST", "/backup/db1/materialized"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/no-such-route"),
    ]
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}]:
        for method, path in protected:
            answer = client.request(method, path, headers=headers, json={"name": "db1"})
            assert answer.status_code == 401, (method, path, headers)
            assert answer.json()["field"] == "Authorization"
            assert answer.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200

    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/backup", json={"name": "db1"}, headers=good).status_code == 201
    assert client.get("/backup", headers=good).json()[0]["name"] == "db1"
    assert client.get("/openapi.json", headers=good).status_code == 200


def test_a_rejected_request_changes_nothing(make_client: MakeClient) -> None:
    client = make_client(token="s3cret")
    assert client.post("/backup", json={"name": "db1"}).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/backup", headers=good).json() == []


def test_without_a_token_the_api_is_open_and_says_so(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="backtor.api.app"):
        client = make_client()
    assert any("BACKTOR_API_TOKEN" in r.getMessage() for r in caplog.records)
    assert client.get("/backup").status_code == 200
