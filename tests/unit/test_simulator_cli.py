"""`backtor retention simulate`, run as the installed command: the stable contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BACKTOR = str(Path(sys.executable).parent / "backtor")

BACKUPS: list[dict[str, Any]] = [
    {"id": "a", "time": "2026-01-01T10:00:00Z"},
    {"id": "b", "time": "2026-01-01T23:00:00Z"},
    {"id": "c", "time": "2026-01-02T23:00:00+01:00"},  # 22:00Z
    {"id": "d", "time": "2026-01-03T05:00:00Z", "status": "FAILED"},
    {"id": 7, "time": "2026-01-03T01:00:00Z", "pinned": True},
    {"id": "e", "time": "2025-12-31T12:00:00Z", "status": "COMPLETED", "pinned": False},
]
POLICY = json.dumps(
    {
        "retentionDaily": "2",
        "retentionWeekly": "0",
        "retentionMonthly": "0",
        "retentionYearly": None,
    }
)
POLICY_NO_YEARLY = POLICY.replace("null", '"0"')


def simulate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BACKTOR, "retention", "simulate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plan_from_stdin_in_utc() -> None:
    result = simulate("--policy", POLICY_NO_YEARLY, stdin=json.dumps(BACKUPS))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Daily L = hour 23: Jan 2 -> c (22:00), Jan 1 -> b (23:00), Dec 31 -> e; keep 2.
    assert json.loads(result.stdout) == {
        "backups": [
            {"id": "d", "tags": [], "action": "ignore", "reasons": []},
            {"id": 7, "tags": [], "action": "keep", "reasons": ["newest", "pinned"]},
            {"id": "c", "tags": ["daily"], "action": "keep", "reasons": ["daily"]},
            {"id": "b", "tags": ["daily"], "action": "keep", "reasons": ["daily"]},
            {"id": "a", "tags": [], "action": "remove", "reasons": []},
            {"id": "e", "tags": ["daily"], "action": "remove", "reasons": []},
        ]
    }


def test_plan_from_a_file_in_a_zone(tmp_path: Path) -> None:
    source = tmp_path / "backups.json"
    source.write_text(json.dumps(BACKUPS), encoding="utf-8")
    result = simulate(
        "--policy", POLICY_NO_YEARLY, "--timezone", "Asia/Kolkata", "--input", str(source)
    )
    assert result.returncode == 0, result.stderr
    # +05:30 moves a, b and c to their own local days: a now represents Jan 1.
    assert json.loads(result.stdout)["backups"] == [
        {"id": "d", "tags": [], "action": "ignore", "reasons": []},
        {"id": 7, "tags": [], "action": "keep", "reasons": ["newest", "pinned"]},
        {"id": "c", "tags": ["daily"], "action": "keep", "reasons": ["daily"]},
        {"id": "b", "tags": ["daily"], "action": "keep", "reasons": ["daily"]},
        {"id": "a", "tags": ["daily"], "action": "remove", "reasons": []},
        {"id": "e", "tags": ["daily"], "action": "remove", "reasons": []},
    ]


def test_defaults_policy_and_zone() -> None:
    result = simulate(stdin='[{"id": "x", "time": "2026-01-01T00:00:00Z"}]')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "backups": [
            {
                "id": "x",
                "tags": ["daily", "weekly", "monthly", "yearly"],
                "action": "keep",
                "reasons": ["daily", "weekly", "monthly", "yearly", "newest"],
            }
        ]
    }


def test_empty_list() -> None:
    result = simulate(stdin="[]")
    assert (result.returncode, json.loads(result.stdout)) == (0, {"backups": []})


def test_null_policy_fields_take_defaults() -> None:
    result = simulate("--policy", POLICY, stdin=json.dumps(BACKUPS))
    assert result.returncode == 0, result.stderr
    reasons = {b["id"]: b["reasons"] for b in json.loads(result.stdout)["backups"]}
    assert reasons["c"] == ["daily", "yearly"]  # yearly defaults to 2@L
    assert reasons["e"] == ["yearly"]


def one(stdin: str, *args: str) -> str:
    """Run expecting bad input: exit 2, nothing on stdout, one line on stderr."""
    result = simulate(*args, stdin=stdin)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("backtor retention simulate: ")
    return result.stderr


GOOD = '[{"id": "1", "time": "2026-01-01T00:00:00Z"}]'


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ("{", "--policy is not valid JSON"),
        ('["retentionDaily"]', "must be a JSON object"),
        ('{"retentionDayly": "4"}', "unknown retention field 'retentionDayly'"),
        ('{"retentionDaily": "4@24"}', "retentionDaily must be"),
        ('{"retentionWeekly": "4@7"}', "retentionWeekly must be"),
        ('{"retentionDaily": 4}', "not a string"),
        ('{"retentionMonthly": "-1"}', "retentionMonthly must be"),
    ],
)
def test_bad_policy(policy: str, words: str) -> None:
    assert words in one(GOOD, "--policy", policy)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "utc"])
def test_bad_timezone(zone: str) -> None:
    assert "is not a known IANA time zone" in one(GOOD, "--timezone", zone)


@pytest.mark.parametrize(
    ("stdin", "words"),
    [
        ("", "input is not valid JSON"),
        ("[{]", "input is not valid JSON"),
        ("[" * 100000 + "]" * 100000, "input is not valid JSON"),
        ('{"id": "1"}', "must be a JSON array"),
        ("[1]", "backup #0 must be a JSON object"),
        ('[{"time": "2026-01-01T00:00:00Z"}]', "id and time are required"),
        ('[{"id": "1"}]', "id and time are required"),
        ('[{"id": true, "time": "2026-01-01T00:00:00Z"}]', "id must be a string or an integer"),
        ('[{"id": 1.5, "time": "2026-01-01T00:00:00Z"}]', "id must be a string or an integer"),
        ('[{"id": null, "time": "2026-01-01T00:00:00Z"}]', "id must be a string or an integer"),
        ('[{"id": "1", "time": 1767225600}]', "time must be an ISO-8601 string"),
        ('[{"id": "1", "time": "yesterday"}]', "is not ISO-8601"),
        ('[{"id": "1", "time": "2026-01-01T00:00:00"}]', "has no UTC offset"),
        ('[{"id": "1", "time": "2026-01-01"}]', "has no UTC offset"),
        ('[{"id": "1", "time": "2026-01-01T00:00:00Z", "status": 3}]', "status must be a string"),
        ('[{"id": "1", "time": "2026-01-01T00:00:00Z", "pinned": "yes"}]', "pinned must be"),
        ('[{"id": "1", "time": "2026-01-01T00:00:00Z", "pined": true}]', "unknown field(s) pined"),
        (
            '[{"id": "1", "time": "2026-01-01T00:00:00Z"}, {"id": 1, "time": "2026-01-02T00:00Z"}]',
            "duplicate backup id 1",
        ),
        ('[{"id": "x", "time": "0001-01-01T00:00:00Z"}]', "no local date"),
    ],
)
def test_bad_backups(stdin: str, words: str) -> None:
    zone = ["--timezone", "America/Sao_Paulo"] if "0001" in stdin else []
    assert words in one(stdin, *zone)


def test_missing_input_file(tmp_path: Path) -> None:
    assert "cannot read --input" in one("", "--input", str(tmp_path / "absent.json"))


def test_input_file_that_is_not_utf8(tmp_path: Path) -> None:
    source = tmp_path / "latin1.json"
    source.write_bytes(b'[{"id": "\xe9", "time": "2026-01-01T00:00:00Z"}]')
    assert "cannot read --input" in one("", "--input", str(source))
