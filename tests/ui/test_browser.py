"""/ui in a real browser: headless Chromium renders the pages of a seeded Backtor.

Each test loads pages over HTTP from the API (uvicorn, SQLite), saves a screenshot (in its
tmp dir, copied to build/ui-screenshots/), and checks the DOM Chromium built: the
`document` after parsing and styling, asked through the DevTools protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.ui.chromium import Browser, Page
from tests.ui.conftest import Screenshot, UiWorld

pytestmark = pytest.mark.needs_chromium

RED = "rgb(198, 40, 40)"  # --fail

SPEC_ROWS = """[...document.querySelectorAll('tr.spec-row')].map(row => ({
  name: row.dataset.spec,
  state: row.dataset.state,
  stateText: row.querySelector('.badge').textContent,
  overdue: row.dataset.overdue,
  successClass: row.querySelector('td.last-success').className,
  successColor: getComputedStyle(row.querySelector('td.last-success .age')).color,
  successText: row.querySelector('td.last-success').innerText,
  nextFire: row.querySelector('td.next-fire').innerText,
  skip: row.querySelector('td.last-skip').innerText,
  href: row.querySelector('a.spec-link').getAttribute('href'),
  running: [...row.querySelectorAll('a.conductor-link')].map(a => a.href),
  pausedReason: row.querySelector('.paused-reason q')?.textContent ?? null,
  pausedTitle: row.querySelector('.paused-reason')?.title ?? null,
}))"""


def with_style(expression: str) -> str:
    """`expression` with `style(el, prop)`: el's computed style property, or null."""
    return f"((style) => {expression})((el, prop) => el ? getComputedStyle(el)[prop] : null)"


MARKS = with_style(
    """[...document.querySelectorAll('svg.timeline a.mark')].map(a => ({
  id: Number(a.dataset.backupId),
  classes: a.getAttribute('class').split(' '),
  href: a.getAttribute('href'),
  title: a.querySelector('title').textContent,
  pinRing: a.querySelector('circle.pin-ring') !== null,
  cross: a.querySelector('path.cross') !== null,
  crossColor: style(a.querySelector('path.cross'), 'stroke'),
  fill: style(a.querySelector('circle'), 'fill'),
  stroke: style(a.querySelector('circle'), 'stroke'),
  hourglass: a.querySelector('path.hourglass') !== null,
  expiresAt: a.dataset.expiresAt ?? null,
}))"""
)

TIER_MARKS = """[...document.querySelectorAll('svg.timeline rect.tier-mark')].map(r => ({
  id: Number(r.parentNode.dataset.backupId),
  row: r.dataset.row,
  kind: r.getAttribute('class').split(' ')[1],
}))"""

TABLE = with_style(
    """[...document.querySelectorAll('table.backups tr.backup-row')].map(tr => ({
  id: Number(tr.dataset.backupId),
  classes: tr.className.split(' '),
  text: tr.innerText,
  pinnedBadge: tr.querySelector('.pinned-flag') !== null,
  links: [...tr.querySelectorAll('a.conductor-link')].map(a => [a.dataset.kind, a.href]),
  errorColor: style(tr.querySelector('.error-text'), 'color'),
  plan: tr.querySelector('td:nth-child(4) .badge').textContent,
  expiresAt: tr.querySelector('time.expires-at')?.getAttribute('datetime') ?? null,
}))"""
)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = browser.page()
    yield opened
    opened.close()


def api(world: UiWorld, path: str) -> Any:
    answer = requests.get(f"{world.open_url}{path}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def shoot(page: Page, tmp_path: Path, keep: Screenshot, name: str, **limits: int) -> Path:
    shot = page.screenshot(tmp_path / name, **limits)
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty canvas
    kept = keep(shot, name)
    print(f"screenshot: {shot} (copied to {kept})")
    return kept


def plan_actions(world: UiWorld, name: str) -> dict[int, str]:
    """The plan GET /backup/{name}/retention shows, by backup id."""
    plan = api(world, f"/backup/{name}/retention?limit=10000")
    return {int(b["id"]): b["action"] for b in plan["backups"]}


def test_overview_shows_every_spec_with_its_state_and_marks_the_overdue_one(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    assert page.goto(f"{ui_world.open_url}/ui") == 200
    shoot(page, tmp_path, keep_screenshot, "ui-overview.png")
    rows = {row["name"]: row for row in page.evaluate(SPEC_ROWS)}

    # Every spec, in the API's order, each linking to its page.
    assert list(rows) == [spec["name"] for spec in api(ui_world, "/backup")]
    assert list(rows) == ["archive", "demo", "events", "logs", "orders", "www"]
    for name, row in rows.items():
        assert row["href"] == f"/ui/spec/{name}"

    # orders had no success for 10 hours on an hourly schedule: overdue, in red.
    orders = rows["orders"]
    assert orders["overdue"] == "true"
    assert "overdue" in orders["successClass"].split()
    assert orders["successColor"] == RED
    assert orders["successText"].startswith("overdue")
    assert "running" in orders["skip"]  # the last skip and its reason
    running = api(ui_world, "/backup/orders")["runningCreateWorkflowID"]
    assert orders["running"] == [f"{ui_world.conductor_ui}/execution/{running}"]
    for name in ("demo", "events", "logs", "www", "archive"):
        assert rows[name]["overdue"] == "false", name
        assert rows[name]["successColor"] != RED, name

    # The demo: a backup 18 s ago, the next fire in 40 s (the page is seen at :20).
    assert rows["demo"]["successText"].startswith("18 s ago")
    assert rows["demo"]["nextFire"].startswith("in 40 s")
    assert rows["archive"]["state"] == "disabled"
    assert rows["archive"]["stateText"] == "disabled (paused)"
    assert rows["archive"]["nextFire"].startswith("—")
    # Paused with a reason: its text as given (markup and all, as text), the only one.
    reason = ui_world.seeded.paused_reason
    assert api(ui_world, "/backup/archive")["pausedReason"] == reason
    assert rows["archive"]["pausedReason"] == reason
    assert rows["archive"]["pausedTitle"] == reason
    assert [name for name, row in rows.items() if row["pausedReason"] is not None] == ["archive"]
    assert page.evaluate("document.scripts.length") == 0  # the reason's <script> is text


def test_the_demo_page_shows_its_backups_as_the_retention_plan(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    assert page.goto(f"{ui_world.open_url}/ui/spec/demo") == 200
    shoot(page, tmp_path, keep_screenshot, "ui-spec-demo.png")
    marks = {m["id"]: m for m in page.evaluate(MARKS)}
    backups = {b["id"]: b for b in api(ui_world, "/backup/demo/materialized")}

    # Every backup the demo made (its ten minutes: removed, being removed and held), one
    # mark each; the whole history fits one page, so the removed ones show too.
    assert len(backups) == 10
    assert sorted(marks) == sorted(backups)
    statuses = [b["status"] for b in backups.values()]
    assert {"COMPLETED", "REMOVING", "REMOVED"} == set(statuses)

    # Each mark is the plan's decision (GET /backup/demo/retention), its status, its link.
    actions = plan_actions(ui_world, "demo")
    for backup_id, found in marks.items():
        backup = backups[backup_id]
        assert actions[backup_id] in found["classes"], (backup_id, found["classes"])
        assert f"status-{backup['status'].lower()}" in found["classes"]
        assert found["href"] == f"{ui_world.conductor_ui}/execution/{backup['createWorkflowId']}"
    kept = sorted(i for i, m in marks.items() if "keep" in m["classes"])
    assert kept == sorted(i for i, b in backups.items() if b["status"] == "COMPLETED")

    # The minutely row keeps the newest three (minutely 3); the newest row the newest.
    # (Ten minutes that cross midnight UTC also keep the day before's last, as daily.)
    newest_three = sorted(backups)[-3:]
    assert set(newest_three) <= set(kept)
    tiers = page.evaluate(TIER_MARKS)
    minutely = sorted(t["id"] for t in tiers if t["row"] == "minutely" and t["kind"] == "kept")
    assert minutely == newest_three
    assert [t["id"] for t in tiers if t["row"] == "newest"] == [max(backups)]

    # Removals link to their remove_backup workflows.
    rows = {row["id"]: row for row in page.evaluate(TABLE)}
    for backup_id, backup in backups.items():
        links = dict(rows[backup_id]["links"])
        assert links["backup"].endswith(f"/execution/{backup['createWorkflowId']}")
        if backup["removeWorkflowId"]:
            assert links["removal"] == (
                f"{ui_world.conductor_ui}/execution/{quote(backup['removeWorkflowId'])}"
            )


def test_pins_failures_and_pending_removals_are_visible(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    seeded = ui_world.seeded
    assert page.goto(f"{ui_world.open_url}/ui/spec/www") == 200
    shoot(page, tmp_path, keep_screenshot, "ui-spec-www.png", max_height=1600)
    marks = {m["id"]: m for m in page.evaluate(MARKS)}
    rows = {row["id"]: row for row in page.evaluate(TABLE)}
    tiers = page.evaluate(TIER_MARKS)
    backups = api(ui_world, "/backup/www/materialized")
    assert sorted(marks) == sorted(b["id"] for b in backups)

    # The plan, mark by mark: after the policy edit (daily 7 -> 3) held backups wait for
    # the next retention run, drawn as removals.
    actions = plan_actions(ui_world, "www")
    for backup_id, found in marks.items():
        assert actions[backup_id] in found["classes"]
    removals = sorted(i for i, m in marks.items() if "remove" in m["classes"])
    assert len(removals) >= 2
    assert removals == sorted(i for i, a in actions.items() if a == "remove")

    # Pinned: a ring on its mark, a mark in the pinned row, a badge in the table.
    pinned = seeded.pinned["www"]
    assert [i for i, m in marks.items() if "pinned" in m["classes"]] == [pinned]
    assert marks[pinned]["pinRing"] and "keep" in marks[pinned]["classes"]
    assert [t["id"] for t in tiers if t["row"] == "pinned"] == [pinned]
    assert rows[pinned]["pinnedBadge"]

    # Failed: a red cross, a red row with its error, shown as text (it holds markup).
    (failed,) = seeded.failed["www"]
    assert {"failure", "status-failed"} <= set(marks[failed]["classes"])
    assert marks[failed]["cross"] and marks[failed]["crossColor"] == RED
    assert "failure" in rows[failed]["classes"]
    assert seeded.hostile_error in rows[failed]["text"]
    assert rows[failed]["errorColor"] == RED
    assert seeded.hostile_error in marks[failed]["title"]
    assert page.evaluate("document.scripts.length") == 0  # the error's <script> is text
    # A removal that keeps failing: its own mark, in the failures too.
    stuck = seeded.remove_failed["www"]
    assert {"failure", "status-remove_failed"} <= set(marks[stuck]["classes"])


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_expiring_backups_have_a_mark_of_their_own_with_their_expiry(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    assert page.goto(f"{ui_world.open_url}/ui/spec/logs") == 200
    shoot(page, tmp_path, keep_screenshot, "ui-spec-logs.png")
    marks = {m["id"]: m for m in page.evaluate(MARKS)}
    rows = {row["id"]: row for row in page.evaluate(TABLE)}
    backups = {b["id"]: b for b in api(ui_world, "/backup/logs/materialized")}
    plan = api(ui_world, "/backup/logs/retention")
    actions = {int(b["id"]): b["action"] for b in plan["backups"]}
    assert sorted(marks) == sorted(rows) == sorted(backups)

    # Five backups EXPIRING (marked within the 5 h delay), the last policy edit's removal
    # candidate still COMPLETED, the newest two kept, the oldest two removed after the delay.
    def having(status: str, action: str | None = None) -> list[int]:
        return sorted(
            i for i, b in backups.items() if b["status"] == status and action in (None, actions[i])
        )

    expiring = having("EXPIRING")
    (candidate,) = having("COMPLETED", "remove")
    kept = having("COMPLETED", "keep")
    assert (len(expiring), len(kept), len(having("REMOVED"))) == (5, 2, 2)
    assert {actions[i] for i in expiring} == {"remove"}  # as GET …/retention plans them

    # Their own mark: an hourglass in an amber disc, unlike a kept backup (filled green)
    # and a removal candidate (a hollow ring); the plan's word stays in its classes.
    looks = {(marks[i]["fill"], marks[i]["stroke"], marks[i]["hourglass"]) for i in expiring}
    assert len(looks) == 1
    ((fill, stroke, hourglass),) = looks
    assert hourglass
    assert len({fill, marks[candidate]["fill"], marks[kept[0]]["fill"]}) == 3, fill
    assert stroke != marks[candidate]["stroke"]
    for other in (candidate, kept[0]):
        assert not marks[other]["hourglass"] and "status-expiring" not in marks[other]["classes"]
    for backup_id in expiring:
        found, row, backup = marks[backup_id], rows[backup_id], backups[backup_id]
        assert {"status-expiring", "remove"} <= set(found["classes"]), found["classes"]
        # ... and its expiresAt: on the mark, in its tooltip and in its table row.
        assert backup["expiresAt"] is not None
        assert when(found["expiresAt"]) == when(backup["expiresAt"]) > ui_world.clock.now
        stamp = f"{when(backup['expiresAt']):%Y-%m-%d %H:%M:%S} UTC"
        assert f"expiring: removal starts {stamp}" in found["title"]
        assert row["plan"] == "expiring" and "status-expiring" in row["classes"]
        assert when(row["expiresAt"]) == when(backup["expiresAt"])
        assert f"removal starts {stamp}" in row["text"]
    assert rows[candidate]["plan"] == "remove" and rows[candidate]["expiresAt"] is None
    assert "remove" in marks[candidate]["classes"]
    assert "status-completed" in marks[candidate]["classes"]
    for backup_id in [candidate, *kept, *having("REMOVED")]:
        assert marks[backup_id]["expiresAt"] is None

    # The summary counts them apart, and agrees with GET …/retention.
    summary = page.evaluate(
        "Object.fromEntries(['keep', 'remove', 'expiring', 'ignore'].map(k => "
        "[k, Number(document.querySelector('.plan-' + k).textContent)]))"
    )
    assert summary == {
        "keep": plan["summary"]["keep"],
        "remove": plan["summary"]["remove"],
        "expiring": 5,
        "ignore": plan["summary"]["ignore"],
    }
    assert summary["remove"] == len(expiring) + 1 and summary["ignore"] == 2
    legend = page.evaluate("document.querySelector('.legend').innerText")
    assert "expiring: removal delayed" in legend
    assert "removal delay 5 h" in page.evaluate("document.querySelector('.spec-card').innerText")


def test_a_paused_specs_page_shows_its_whole_reason(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    assert page.goto(f"{ui_world.open_url}/ui/spec/archive") == 200
    shoot(page, tmp_path, keep_screenshot, "ui-spec-archive.png", max_height=1200)
    shown = page.evaluate("document.querySelector('.spec-card .paused-reason q').textContent")
    assert shown == ui_world.seeded.paused_reason
    assert page.evaluate("document.scripts.length") == 0


def test_a_spec_with_100000_backups_is_drawn_a_page_at_a_time(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    base = f"{ui_world.open_url}/ui/spec/events"
    # The held backups (the plan's keeps and the removals still waiting): one page.
    assert page.goto(base) == 200
    shoot(page, tmp_path, keep_screenshot, "ui-spec-events.png", max_height=1500)
    held = page.evaluate(MARKS)
    counts = api(ui_world, "/backup/events/retention?limit=1")["summary"]
    assert len(held) == counts["keep"] + counts["remove"] < 200
    assert page.evaluate("document.querySelector('svg.timeline').dataset.axis") == "log"

    # With the removed history: 200 marks a page, then the older ones, page after page.
    assert page.goto(f"{base}?removed=1") == 200
    first = [m["id"] for m in page.evaluate(MARKS)]
    assert len(first) == 200
    assert page.evaluate("document.documentElement.outerHTML.length") < 400_000
    assert page.submit("document.querySelector('a.older-page').click()") == 200
    second = [m["id"] for m in page.evaluate(MARKS)]
    assert len(second) == 200
    assert max(second) < min(first)  # older ones, none repeated
    assert "after=" in page.url()


def test_with_a_token_the_page_asks_for_it_and_keeps_a_strict_cookie(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    base = ui_world.secured_url
    # No token yet: the sign-in form, and nothing about the specs.
    assert page.goto(f"{base}/ui/spec/demo") == 401
    shoot(page, tmp_path, keep_screenshot, "ui-sign-in.png")
    assert page.evaluate("document.querySelector('form.login input[type=password]').name") == (
        "token"
    )
    assert page.evaluate("document.querySelectorAll('svg.timeline, table').length") == 0

    def sign_in(token: str) -> int:
        return page.submit(
            f"document.querySelector('#token').value = {token!r};"
            "document.querySelector('form.login').requestSubmit()"
        )

    assert sign_in("not-the-token") == 401
    assert "not this Backtor's API token" in page.evaluate("document.body.innerText")
    assert page.cookies() == []

    # The right token: back to the page asked for, with a session cookie.
    assert sign_in(ui_world.token) == 200
    assert page.url() == f"{base}/ui/spec/demo"
    assert len(page.evaluate(MARKS)) == 10
    (cookie,) = page.cookies()
    assert cookie["name"] == "backtor_ui"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui"
    assert ui_world.token not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

    # The cookie opens the pages, not the API.
    assert page.goto(f"{base}/ui") == 200
    assert len(page.evaluate(SPEC_ROWS)) == 6
    assert page.goto(f"{base}/backup") == 401

    # The token never went into a URL, in any request the browser made.
    assert page.requested and not [u for u in page.requested if ui_world.token in u]
    assert not [u for u in page.requested if quote(ui_world.token) in u]

    # Signing out ends the session.
    assert page.goto(f"{base}/ui") == 200
    assert (
        page.submit("document.querySelector('form[action=\"/ui/logout\"]').requestSubmit()") == 200
    )
    assert page.url() == f"{base}/ui/login"
    assert page.goto(f"{base}/ui") == 401
