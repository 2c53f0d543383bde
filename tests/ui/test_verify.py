"""Verification and restore state on /ui: each backup's verdict (VERIFIED, FAILED, NEVER)
with when and, on hover, what the verification found; its last restore; and on the spec's
page when its newest backup was last verified. The seed records them through
backtor.scheduling.restores (tests/ui/seed.py); the pages must agree with the API."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.ui.chromium import Browser, Page
from tests.ui.conftest import Screenshot, UiWorld

ROW = re.compile(r'<tr id="backup-(\d+)" class="backup-row[^"]*" data-backup-id="\d+">(.*?)</tr>')
CELL = re.compile(r'<td class="verify-cell" data-verify="(\w+)">(.*?)</td>')


def page_html(world: UiWorld, name: str) -> str:
    answer = requests.get(f"{world.open_url}/ui/spec/{name}", timeout=30)
    assert answer.status_code == 200
    return answer.text


def materialized(world: UiWorld, name: str) -> dict[int, dict[str, Any]]:
    answer = requests.get(f"{world.open_url}/backup/{name}/materialized?limit=1000", timeout=30)
    assert answer.status_code == 200, answer.text
    return {int(b["id"]): b for b in answer.json()}


def verify_cells(text: str) -> dict[int, tuple[str, str]]:
    cells = {}
    for backup_id, row in ROW.findall(text):
        found = CELL.search(row)
        assert found is not None, row
        cells[int(backup_id)] = (found.group(1), found.group(2))
    return cells


def test_every_backup_row_shows_its_verdict_as_the_api_does(ui_world: UiWorld) -> None:
    for name in ("www", "orders", "demo"):
        cells = verify_cells(page_html(ui_world, name))
        api = materialized(ui_world, name)
        assert cells and set(cells) <= set(api)
        for backup_id, (status, _) in cells.items():
            assert status == api[backup_id]["verifyStatus"], (name, backup_id)


def test_a_verdict_shows_when_and_what_was_found_escaped(ui_world: UiWorld) -> None:
    seeded = ui_world.seeded
    cells = verify_cells(page_html(ui_world, "www"))
    for backup_id, (status, details) in seeded.verdicts["www"].items():
        shown, cell = cells[backup_id]
        assert shown == status
        badge = (
            f'<span class="badge verify verify-{status.lower()}" title="{html.escape(details)}">'
        )
        assert badge in cell
        assert 'class="rel verified-at"' in cell
    failed = next(i for i, (s, _) in seeded.verdicts["www"].items() if s == "FAILED")
    _, cell = cells[failed]
    # The details hold markup: shown as text, never as elements.
    assert "<b>" not in cell and "&lt;b&gt;invalid compressed data&lt;/b&gt;" in cell
    assert 'class="failure-text verify-details"' in cell
    never = [i for i, (s, _) in cells.items() if s == "NEVER"]
    assert never and all('title="never verified"' in cells[i][1] for i in never)


def test_the_last_restore_and_a_verification_under_way_are_shown(ui_world: UiWorld) -> None:
    seeded = ui_world.seeded
    text = page_html(ui_world, "www")
    cells = verify_cells(text)
    restored = seeded.restored["www"]
    assert (
        'class="badge restore restore-completed" title="restored to /srv/restore/www"'
        in (cells[restored][1])
    )
    assert ">restore COMPLETED<" in cells[restored][1]
    verifying = seeded.verifying["www"]
    assert 'class="badge running verifying"' in cells[verifying][1]
    assert sum("verifying" in cell for _, cell in cells.values()) == 1
    # Their workflows link to Conductor's UI.
    api = materialized(ui_world, "www")
    restore_run = api[restored]["lastRestore"]["workflowId"]
    assert f"{ui_world.conductor_ui}/execution/{restore_run}" in text
    verify_run = api[verifying]["lastVerify"]["workflowId"]
    assert f"{ui_world.conductor_ui}/execution/{verify_run}" in text


def verified_fact(text: str) -> str:
    found = re.search(
        r'<tr><th>Verified</th><td class="verified" colspan="3"[^>]*>(.*?)</td>', text
    )
    assert found is not None
    return found.group(0)


def test_the_spec_page_says_when_its_newest_backup_was_last_verified(ui_world: UiWorld) -> None:
    seeded = ui_world.seeded
    # www: its newest backup is the verified one, an hour ago; one held backup failed.
    fact = verified_fact(page_html(ui_world, "www"))
    api = materialized(ui_world, "www")
    newest = max(
        (b for b in api.values() if b["status"] == "COMPLETED"), key=lambda b: b["endTime"]
    )
    assert seeded.verdicts["www"][newest["id"]][0] == "VERIFIED"
    assert f'data-last-verified="{newest["lastVerifiedAt"].replace("Z", "+00:00")}"' in fact
    assert f'newest backup <a href="#backup-{newest["id"]}">#{newest["id"]}</a>' in fact
    assert "verify-verified" in fact and "1 h ago" in fact
    assert "1 held backup(s) failed their latest verification" in fact
    # orders: the newest backups were never verified; an older one was, 30 hours ago.
    fact = verified_fact(page_html(ui_world, "orders"))
    (proven,) = seeded.verdicts["orders"]
    assert "verify-never" in fact
    assert f'newest proven restorable: <a href="#backup-{proven}">#{proven}</a>' in fact
    assert "verified 30 h ago" in fact
    assert "failed their latest verification" not in fact
    # demo: nothing verified.
    fact = verified_fact(page_html(ui_world, "demo"))
    assert "no held backup is verified yet" in fact and "data-last-verified" not in fact


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = browser.page()
    yield opened
    opened.close()


VERIFY_CELLS = """[...document.querySelectorAll('table.backups tr.backup-row')].map(tr => {
  const cell = tr.querySelector('td.verify-cell');
  const badge = cell.querySelector('.badge.verify');
  return {
    id: Number(tr.dataset.backupId),
    verdict: badge.textContent,
    hover: badge.title,
    color: getComputedStyle(badge).color,
    text: cell.innerText,
    header: tr.closest('table').querySelectorAll('th')[tr.cells.length - 2].textContent,
  };
})"""


@pytest.mark.needs_chromium
def test_chromium_renders_the_verdicts_with_their_hover(
    page: Page, ui_world: UiWorld, tmp_path: Path, keep_screenshot: Screenshot
) -> None:
    seeded = ui_world.seeded
    assert page.goto(f"{ui_world.open_url}/ui/spec/www") == 200
    shot = page.screenshot(tmp_path / "ui-spec-www-verify.png", max_height=1600)
    keep_screenshot(shot, "ui-spec-www-verify.png")
    cells = {c["id"]: c for c in page.evaluate(VERIFY_CELLS)}
    for backup_id, (status, details) in seeded.verdicts["www"].items():
        assert cells[backup_id]["verdict"] == status
        assert cells[backup_id]["hover"] == details  # the whole details, as plain text
        assert cells[backup_id]["header"] == "Verify / restore"
    failed = next(i for i, (s, _) in seeded.verdicts["www"].items() if s == "FAILED")
    assert cells[failed]["color"] == "rgb(166, 27, 27)"
    assert "<b>invalid compressed data</b>" in cells[failed]["text"]
    assert "restore COMPLETED" in cells[seeded.restored["www"]]["text"]
    assert page.evaluate("document.querySelectorAll('td.verified .verify-verified').length") == 1
    assert page.evaluate("document.scripts.length") == 0
