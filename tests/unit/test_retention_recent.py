"""Keep-within and keep-last, worked by hand (docs/retention.md, "Keep within and keep last")."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from backtor.core.policy import (
    KeepWithin,
    PolicyError,
    RetentionPolicy,
    TierRule,
    parse_keep_within,
    parse_last,
)
from backtor.core.retention import BackupRecord, plan_retention

BERLIN = ZoneInfo("Europe/Berlin")
OFF = TierRule(0, None)


def policy(within: str | None = None, last: int = 0, daily: int = 0) -> RetentionPolicy:
    return RetentionPolicy(
        OFF,
        OFF,
        TierRule(daily, None),
        OFF,
        OFF,
        OFF,
        keep_within=parse_keep_within(within),
        keep_last=last,
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def reasons(
    backups: list[BackupRecord], p: RetentionPolicy, tz: ZoneInfo = BERLIN
) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in plan_retention(backups, p, tz).decisions}


# Berlin springs forward on 2024-03-31 at 02:00 CET -> 03:00 CEST: that day has 23 hours.
SPRING = [
    BackupRecord("newest", at("2024-03-31T12:00:00+02:00")),  # 10:00 UTC
    BackupRecord("d-1 12:30", at("2024-03-30T12:30:00+01:00")),  # 11:30 UTC
    BackupRecord("d-1 12:00", at("2024-03-30T12:00:00+01:00")),  # 11:00 UTC, 23 h before
    BackupRecord("d-1 11:30", at("2024-03-30T11:30:00+01:00")),  # 10:30 UTC
    BackupRecord("d-1 10:59", at("2024-03-30T10:59:00+01:00")),  # 09:59 UTC, > 24 h before
]


def test_one_day_is_a_calendar_day_on_the_zones_clock() -> None:
    """'1d' before 12:00 CEST is 12:00 CET the day before: 23 hours, not 24."""
    got = reasons(SPRING, policy(within="1d"))
    assert got == {
        "newest": ("newest", "within"),
        "d-1 12:30": ("within",),
        "d-1 12:00": ("within",),  # exactly at the cutoff: kept
        "d-1 11:30": (),
        "d-1 10:59": (),
    }


def test_hours_are_elapsed_time() -> None:
    """'24h' reaches 24 real hours back, 11:00 CET the day before (10:00 UTC)."""
    got = reasons(SPRING, policy(within="24h"))
    assert got["d-1 11:30"] == ("within",)
    assert got["d-1 10:59"] == ()


def test_days_then_hours() -> None:
    """'1d1h' = 12:00 CET the day before, then one more real hour: 11:00 CET."""
    got = reasons(SPRING, policy(within="1d1h"))
    assert got["d-1 11:30"] == ("within",)
    assert got["d-1 10:59"] == ()


def test_fall_back_day_has_25_hours() -> None:
    """Berlin falls back on 2024-10-27: '1d' before 12:00 CET is 12:00 CEST, 25 hours."""
    backups = [
        BackupRecord("newest", at("2024-10-27T12:00:00+01:00")),  # 11:00 UTC
        BackupRecord("24.5h", at("2024-10-26T11:30:00+02:00")),  # 09:30 UTC
        BackupRecord("25h", at("2024-10-26T12:00:00+02:00")),  # 10:00 UTC
        BackupRecord("25.5h", at("2024-10-26T11:30:00+02:00").replace(minute=29)),
    ]
    got = reasons(backups, policy(within="1d"))
    assert got == {"newest": ("newest", "within"), "25h": ("within",), "24.5h": (), "25.5h": ()}


def test_a_cutoff_in_the_gap_reads_the_offset_before_the_change() -> None:
    """'1d' before 02:30 CEST on Apr 1 is 02:30 on Mar 31, which does not exist: it is read
    as 02:30 CET (fold=0), i.e. 01:30 UTC = 03:30 CEST."""
    backups = [
        BackupRecord("newest", at("2024-04-01T02:30:00+02:00")),
        BackupRecord("03:30 CEST", at("2024-03-31T03:30:00+02:00")),
        BackupRecord("03:29 CEST", at("2024-03-31T03:29:00+02:00")),
    ]
    got = reasons(backups, policy(within="1d"))
    assert got == {"newest": ("newest", "within"), "03:30 CEST": ("within",), "03:29 CEST": ()}


def test_within_counts_from_the_newest_candidate_not_the_clock() -> None:
    """A failed, newer backup is no candidate; a pinned one is (and keeps its pin)."""
    backups = [
        BackupRecord("failed", at("2024-06-10T00:00:00Z"), status="FAILED"),
        BackupRecord("pinned", at("2024-06-05T00:00:00Z"), pinned=True),
        BackupRecord("2 days", at("2024-06-03T00:00:00Z")),
        BackupRecord("3 days", at("2024-06-02T00:00:00Z")),
    ]
    got = reasons(backups, policy(within="2d"), ZoneInfo("UTC"))
    assert got == {
        "failed": (),
        "pinned": ("newest", "within", "pinned"),
        "2 days": ("within",),
        "3 days": (),
    }


def test_last_keeps_the_n_newest_candidates() -> None:
    backups = [
        BackupRecord("running", at("2024-06-04T00:00:00Z"), status="RUNNING"),
        BackupRecord("c", at("2024-06-03T00:00:00Z")),
        BackupRecord("b", at("2024-06-02T00:00:00Z"), pinned=True),
        BackupRecord("a", at("2024-06-01T00:00:00Z")),
        BackupRecord("z", at("2024-05-31T00:00:00Z")),
    ]
    got = reasons(backups, policy(last=3), ZoneInfo("UTC"))
    assert got == {
        "running": (),
        "c": ("newest", "last"),
        "b": ("last", "pinned"),
        "a": ("last",),
        "z": (),
    }


def test_last_and_tiers_together() -> None:
    """Reasons list tiers, then newest, within, last, pinned; a tier still picks as before."""
    backups = [
        BackupRecord("d2 23h", at("2024-06-02T23:00:00Z")),
        BackupRecord("d2 10h", at("2024-06-02T10:00:00Z")),
        BackupRecord("d1 23h", at("2024-06-01T23:00:00Z")),
    ]
    got = reasons(backups, policy(last=2, daily=1, within="1h"), ZoneInfo("UTC"))
    assert got == {
        "d2 23h": ("daily", "newest", "within", "last"),
        "d2 10h": ("last",),
        "d1 23h": (),
    }


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("36h", "36h"),
        ("7d", "7d"),
        ("2w", "2w"),
        ("1d12h", "1d12h"),
        (" 1D12H ", "1d12h"),
        ("90m", "90m"),
        ("1w2d3h4m5s", "1w2d3h4m5s"),
        ("0d36h", "36h"),
    ],
)
def test_durations_parse_to_canonical_text(text: str, canonical: str) -> None:
    within = parse_keep_within(text)
    assert within is not None and within.text == canonical


@pytest.mark.parametrize("text", ["", "  ", None, "0d", "0w0s"])
def test_an_empty_duration_is_off(text: str | None) -> None:
    assert parse_keep_within(text) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("7", "syntax"),
        ("1h1d", "syntax"),  # largest unit first
        ("1.5d", "syntax"),
        ("-1d", "syntax"),
        ("1y", "syntax"),
        ("1000000000w", "more than 9 digits"),
        (7, "not a string"),
    ],
)
def test_bad_durations_name_the_field_and_the_reason(text: object, why: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_keep_within(text)
    assert raised.value.field == "retentionKeepWithin"
    assert why in raised.value.message


@pytest.mark.parametrize("value", [-1, 100_001, "3", 2.0, True])
def test_bad_last_names_the_field(value: object) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_last(value)
    assert raised.value.field == "retentionLast"


def test_keeps_only_newest() -> None:
    assert policy().keeps_only_newest
    assert policy(last=1).keeps_only_newest
    assert not policy(last=2).keeps_only_newest
    assert not policy(within="1h").keeps_only_newest
    assert not policy(daily=1).keeps_only_newest
    assert not RetentionPolicy().keeps_only_newest


def test_from_fields_reads_the_new_fields() -> None:
    read = RetentionPolicy.from_fields({"retentionKeepWithin": "2w", "retentionLast": 3})
    assert read.keep_within == KeepWithin(weeks=2) and read.keep_last == 3
    assert read.keep_within_text == "2w"
    assert RetentionPolicy.from_fields({}).keep_within_text == ""
