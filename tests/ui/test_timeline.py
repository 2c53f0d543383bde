"""The timeline's SVG, the overdue rule and a paused spec's reason, as pure functions (no
server, no browser)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from backtor.api.ui import freshness
from backtor.api.ui.html import duration, workflow_url
from backtor.api.ui.pages import PAUSED_REASON_CHARS, paused_reason
from backtor.api.ui.timeline import Mark, Row, Scale, choose_axis, legend, render
from backtor.db.models import BackupSpec

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def mark(backup_id: int, minutes: int, **fields: Any) -> Mark:
    values: dict[str, Any] = {
        "status": "COMPLETED",
        "action": "keep",
        "tags": (),
        "reasons": (),
        "pinned": False,
        "href": f"#backup-{backup_id}",
        "title": f"backup {backup_id}",
    }
    values.update(fields)
    return Mark(backup_id, T0 + timedelta(minutes=minutes), **values)


ROWS = [Row("minutely", "minutely", "3@59", True), Row("pinned", "pinned", "", True)]


def test_one_mark_per_backup_with_its_decision_and_status() -> None:
    marks = [
        mark(1, 0, action="remove", tags=("minutely",)),
        mark(2, 1, reasons=("minutely",), tags=("minutely",)),
        mark(3, 2, status="FAILED", action="ignore"),
        mark(4, 3, pinned=True, reasons=("newest", "pinned")),
    ]
    svg = render(marks, ROWS, axis="linear", unit_seconds=60, zone=UTC)
    classes = dict(re.findall(r'<a class="(mark [^"]*)" [^>]*data-backup-id="(\d+)"', svg))
    found = {int(i): c.split() for c, i in classes.items()}
    assert sorted(found) == [1, 2, 3, 4]
    assert "remove" in found[1] and "keep" in found[2]
    assert {"ignore", "failure", "status-failed"} <= set(found[3])
    assert "pinned" in found[4]
    assert svg.count('class="pin-ring"') == 1
    # Tier rows: kept (a reason) is filled, represents (a tag only) hollow; the pins' row.
    assert re.search(r'tier-mark kept" data-row="minutely"', svg)
    assert re.search(r'tier-mark represents" data-row="minutely"', svg)
    assert svg.count('data-row="pinned" ') == 1


def test_an_expiring_backup_has_a_mark_of_its_own_with_its_expiry() -> None:
    expiry = T0 + timedelta(hours=5)
    marks = [
        mark(1, 0, status="EXPIRING", action="remove", tags=("minutely",), expires_at=expiry),
        mark(2, 1, action="remove", tags=("minutely",)),  # a removal candidate
        mark(3, 2, reasons=("minutely",), tags=("minutely",)),
    ]
    svg = render(marks, ROWS, axis="linear", unit_seconds=60, zone=UTC)
    drawn = dict(
        re.findall(r'<a class="mark [^"]*" [^>]*data-backup-id="(\d+)"[^>]*>(.*?)</a>', svg)
    )
    assert set(drawn) == {"1", "2", "3"}
    assert 'class="hourglass"' in drawn["1"]
    assert 'class="hourglass"' not in drawn["2"] + drawn["3"]
    opening = re.search(r'<a class="(mark [^"]*)" [^>]*data-backup-id="1"[^>]*>', svg)
    assert opening is not None
    assert {"remove", "status-expiring"} <= set(opening[1].split())
    assert f'data-expires-at="{expiry.isoformat()}"' in opening[0]
    assert svg.count("data-expires-at=") == 1
    assert "status-expiring" in legend() and 'class="hourglass"' in legend()


def test_a_paused_specs_reason_is_escaped_and_clipped_on_the_overview() -> None:
    hostile = '<b>disk</b> & "full"'
    shown = paused_reason(spec(enabled=False, paused_reason=hostile))
    assert "<b>" not in shown
    assert "<q>&lt;b&gt;disk&lt;/b&gt; &amp; &quot;full&quot;</q>" in shown
    long = "x" * 500
    clipped = paused_reason(spec(enabled=False, paused_reason=long), PAUSED_REASON_CHARS)
    assert f"<q>{'x' * (PAUSED_REASON_CHARS - 1)}\u2026</q>" in clipped
    assert f'title="{long}"' in clipped  # the whole reason in its tooltip
    assert f"<q>{long}</q>" in paused_reason(spec(enabled=False, paused_reason=long))
    # Only a paused spec shows one (a purged spec is purging, whatever its reason said).
    assert paused_reason(spec(enabled=False, paused_reason=None)) == ""
    assert paused_reason(spec(enabled=False, deleting=True, paused_reason=hostile)) == ""


def test_text_is_escaped() -> None:
    svg = render(
        [mark(1, 0, title="<script>x</script>", href="https://c/execution/a&b")],
        [Row("<b>", "<b>", "&", True)],
        axis="linear",
        unit_seconds=60,
        zone=UTC,
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<b>" not in svg and "a&amp;b" in svg


def test_the_axis_is_linear_for_short_spans_and_log_for_long_histories() -> None:
    minutes = [T0.timestamp() + 60 * i for i in range(100)]
    assert choose_axis(minutes, 60, None) == "linear"
    years = [T0.timestamp() - 86400 * 365 * 2, T0.timestamp()]
    assert choose_axis(years, 60, None) == "log"
    assert choose_axis(years, 60, "linear") == "linear"
    scale = Scale("log", newest=1000.0, oldest=0.0, unit=10.0)
    assert scale.x(1000.0) > scale.x(990.0) > scale.x(500.0) > scale.x(0.0)
    # Log: the last ten seconds take more room than the first five hundred.
    assert scale.x(1000.0) - scale.x(990.0) > scale.x(500.0) - scale.x(0.0)


def test_workflow_links_quote_the_id() -> None:
    assert workflow_url("http://c:5000", "a b/c") == "http://c:5000/execution/a%20b%2Fc"
    assert workflow_url(None, "abc") is None
    assert workflow_url("http://c:5000", None) is None


def test_durations() -> None:
    assert duration(5) == "5 s"
    assert duration(125) == "2 min"
    assert duration(3 * 3600 + 60) == "3 h 1 min"
    assert duration(3 * 86400 + 3600) == "3 d 1 h"
    assert duration(400 * 86400) == "1 y 35 d"


def spec(**fields: Any) -> BackupSpec:
    values: dict[str, Any] = {
        "enabled": True,
        "deleting": False,
        "from_date": None,
        "to_date": None,
        "cron_string": "0 0 * * * *",
        "timezone": "UTC",
        "created_at": T0 - timedelta(days=10),
        "last_update": T0 - timedelta(days=10),
    }
    values.update(fields)
    return cast(BackupSpec, SimpleNamespace(**values))


@pytest.mark.parametrize(
    ("last_success_hours_ago", "overdue"), [(1, False), (1.4, False), (1.6, True), (None, True)]
)
def test_overdue_is_the_alerts_rule(last_success_hours_ago: float | None, overdue: bool) -> None:
    """Hourly: overdue past 1.5 h without a success (or since the schedule began)."""
    last = None if last_success_hours_ago is None else T0 - timedelta(hours=last_success_hours_ago)
    judged = freshness.judge(spec(), last, T0, freshness.deadline())
    assert judged.period_seconds == 3600
    assert judged.overdue is overdue


def test_a_paused_or_new_spec_is_never_overdue() -> None:
    old = T0 - timedelta(days=5)
    assert not freshness.judge(spec(enabled=False), old, T0, freshness.deadline()).overdue
    assert not freshness.judge(spec(deleting=True), old, T0, freshness.deadline()).overdue
    updated = spec(last_update=T0 - timedelta(minutes=30))  # the clock restarts on an edit
    assert not freshness.judge(updated, old, T0, freshness.deadline()).overdue
    # A per-second schedule gets at least 5 minutes, times 1.5.
    fast = spec(cron_string="* * * * * *")
    assert not freshness.judge(fast, T0 - timedelta(minutes=7), T0, freshness.deadline()).overdue
    assert freshness.judge(fast, T0 - timedelta(minutes=8), T0, freshness.deadline()).overdue


def test_the_alert_rule_still_says_what_the_page_applies() -> None:
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    missing = rules.split("alert: BacktorBackupMissing", 1)[1].split("- alert:", 1)[0]
    factor, floor = freshness.OVERDUE_FACTOR, int(freshness.MIN_PERIOD_SECONDS)
    expression = (
        f"{factor} * clamp_min(max by (backup) (backtor_backup_expected_period_seconds), {floor})"
    )
    assert expression in missing
