"""Cursor pages on the list routes: `limit`, `after`, and `Link: <...>; rel="next"`.

Defect 5: `GET /backup`, `/materialized` and the retention plan returned every row at once.
The body stays what it was (a plain array; the plan's object), only shorter; a client that
sends neither parameter gets everything it got before, up to the default limit.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AddBackup

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


def next_url(answer: Any) -> str | None:
    link = answer.headers.get("link")
    if link is None:
        return None
    match = LINK.match(link)
    assert match, link
    return match["url"]


def follow(client: TestClient, url: str) -> list[Any]:
    """Every page from `url` on, following the Link headers; the pages as given."""
    pages = []
    while url is not None:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        url = next_url(answer)  # type: ignore[assignment]
    return pages


def test_specs_come_in_pages_by_name(client: TestClient) -> None:
    names = ["b", "A", "a-1", "a.1", "a_1", "Z9", "c"]
    for name in names:
        enabled = 0 if name == "c" else 1
        assert client.post("/backup", json={"name": name, "enabled": enabled}).status_code == 201
    everything = client.get("/backup")
    assert everything.status_code == 200
    assert "link" not in everything.headers  # one page holds them all
    by_name = [spec["name"] for spec in everything.json()]
    assert by_name == sorted(names)  # code point order

    pages = follow(client, "/backup?limit=3")

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [spec["name"] for page in pages for spec in page] == by_name
    assert [s["name"] for p in follow(client, "/backup?enabled=1&limit=2") for s in p] == [
        name for name in by_name if name != "c"
    ]


def test_the_link_keeps_the_other_parameters(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        assert client.post("/backup", json={"name": name}).status_code == 201
    first = client.get("/backup", params={"enabled": "1", "limit": "2"})
    assert [spec["name"] for spec in first.json()] == ["a", "b"]
    assert next_url(first) == "/backup?enabled=1&limit=2&after=b"
    last = client.get("/backup", params={"enabled": "1", "limit": "2", "after": "b"})
    assert [spec["name"] for spec in last.json()] == ["c"]
    assert "link" not in last.headers


def test_backups_come_in_pages_newest_first(client: TestClient, add_backup: AddBackup) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    assert client.post("/backup", json={"name": "db2"}).status_code == 201
    ids = [
        add_backup("db1", "COMPLETED" if i % 3 else "FAILED", scheduled_at=T0 + timedelta(hours=i))
        for i in range(7)
    ]
    # Two more at one instant, recorded late: the greater id is the newer.
    ids += [add_backup("db1", scheduled_at=T0 + timedelta(hours=3)) for _ in range(2)]
    add_backup("db2", scheduled_at=T0)
    everything = client.get("/backup/db1/materialized").json()
    assert "link" not in client.get("/backup/db1/materialized").headers

    pages = follow(client, "/backup/db1/materialized?limit=2")

    assert [len(page) for page in pages] == [2, 2, 2, 2, 1]
    assert [b["id"] for page in pages for b in page] == [b["id"] for b in everything]
    times = [(b["scheduledTime"], b["id"]) for b in everything]
    assert times == sorted(times, reverse=True)
    completed = follow(client, "/backup/db1/materialized?status=COMPLETED&limit=4")
    assert [b["id"] for page in completed for b in page] == [
        b["id"] for b in everything if b["status"] == "COMPLETED"
    ]


def test_the_retention_plan_comes_in_pages(client: TestClient, add_backup: AddBackup) -> None:
    policy = {"retentionDaily": "2", "retentionWeekly": "0", "retentionMonthly": "0"}
    assert client.post("/backup", json={"name": "db1", **policy}).status_code == 201
    for day in range(6):
        add_backup("db1", scheduled_at=T0 + timedelta(days=day, hours=23))
        add_backup("db1", "REMOVED", scheduled_at=T0 + timedelta(days=day, hours=1))
    whole = client.get("/backup/db1/retention")
    assert "link" not in whole.headers
    body = whole.json()
    assert body["summary"] == {"keep": 2, "remove": 4, "ignore": 6}

    pages = follow(client, "/backup/db1/retention?limit=5")

    assert [len(page["backups"]) for page in pages] == [5, 5, 2]
    assert [b for page in pages for b in page["backups"]] == body["backups"]
    for page in pages:  # the summary is the whole plan's, on every page
        assert {k: v for k, v in page.items() if k != "backups"} == {
            k: v for k, v in body.items() if k != "backups"
        }
    preview = client.post("/backup/db1/retention/preview?limit=5", json=policy)
    assert preview.status_code == 200, preview.text
    assert preview.json()["backups"] == body["backups"][:5]
    assert next_url(preview) is not None


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/backup", {"limit": "0"}, "limit"),
        ("/backup", {"limit": "10001"}, "limit"),
        ("/backup", {"limit": "ten"}, "limit"),
        ("/backup", {"after": "no/such name"}, "after"),
        ("/backup/db1/materialized", {"limit": "-1"}, "limit"),
        ("/backup/db1/materialized", {"after": "x"}, "after"),
        ("/backup/db1/retention", {"limt": "5"}, "limt"),  # unknown parameters still refused
        ("/backup/db1/materialized", {"limits": "5"}, "limits"),
    ],
)
def test_bad_page_parameters_are_refused(
    client: TestClient, path: str, query: dict[str, str], field: str
) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.get(path, params=query)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field


@pytest.mark.parametrize(
    ("path", "after"),
    [
        ("/backup/db1/materialized", "999999"),  # a backup id, not one of db1's
        ("/backup/db1/retention", "0"),
        ("/backup/db1/materialized", "9" * 5000),  # beyond any id (and int()'s digit limit)
        ("/backup/db1/retention", "0" * 30 + "7"),
    ],
)
def test_a_cursor_naming_no_backup_of_the_spec_is_not_found(
    client: TestClient, path: str, after: str
) -> None:
    """Well formed (digits, as the schema's pattern says), but nothing there: 404, not 422."""
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    answer = client.get(path, params={"after": after})
    assert answer.status_code == 404, answer.text
    assert answer.json()["field"] == "after"


def test_the_largest_page_is_accepted(client: TestClient) -> None:
    assert client.post("/backup", json={"name": "db1"}).status_code == 201
    for path in ("/backup", "/backup/db1/materialized", "/backup/db1/retention"):
        assert client.get(path, params={"limit": "10000"}).status_code == 200
