"""`backtor retention simulate` with a removal delay: `expiresAt` (docs/retention.md)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from backtor.core.simulator import run_simulation

BACKUPS: list[dict[str, Any]] = [
    {"id": "a", "time": "2026-01-01T10:00:00Z"},
    {"id": "b", "time": "2026-01-01T23:00:00Z"},
    {"id": "c", "time": "2026-01-02T23:00:00+01:00"},
    {"id": 7, "time": "2026-01-03T01:00:00Z", "pinned": True},
]
TIERS = {
    "retentionDaily": "2",
    "retentionWeekly": "0",
    "retentionMonthly": "0",
    "retentionYearly": "0",
}


def simulate(
    backups: list[dict[str, Any]], policy: dict[str, Any], now: str | None = None
) -> tuple[int, Any, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_simulation(
        policy=json.dumps(policy),
        timezone="UTC",
        input_path=None,
        stdin=io.StringIO(json.dumps(backups)),
        stdout=stdout,
        stderr=stderr,
        now=now,
    )
    return code, json.loads(stdout.getvalue()) if code == 0 else None, stderr.getvalue()


def expiries(plan: Any) -> dict[Any, Any]:
    return {b["id"]: (b["action"], b["expiresAt"]) for b in plan["backups"]}


def test_a_delay_and_now_give_each_removal_its_expiry() -> None:
    code, plan, _ = simulate(
        BACKUPS, {**TIERS, "removalDelaySeconds": 3600}, now="2026-01-03T02:00:00+01:00"
    )
    assert code == 0
    assert expiries(plan) == {
        7: ("keep", None),
        "c": ("keep", None),
        "b": ("keep", None),
        "a": ("remove", "2026-01-03T02:00:00Z"),  # 01:00Z + 1 h, in UTC
    }


def test_without_delay_or_now_the_output_is_as_before() -> None:
    code, plan, _ = simulate(BACKUPS, TIERS)
    assert code == 0
    assert all(set(entry) == {"id", "tags", "action", "reasons"} for entry in plan["backups"])


@pytest.mark.parametrize(
    ("policy", "now"),
    [
        ({**TIERS, "removalDelaySeconds": 0}, "2026-01-03T02:00:00Z"),  # removed at once
        ({**TIERS, "removalDelaySeconds": 60}, None),  # no moment to count from
        (TIERS, "2026-01-03T02:00:00Z"),  # no delay given
        ({**TIERS, "removalDelaySeconds": None}, None),
    ],
)
def test_expires_at_is_null_unless_both_a_delay_and_now(policy: Any, now: str | None) -> None:
    code, plan, _ = simulate(BACKUPS, policy, now=now)
    assert code == 0
    assert expiries(plan)["a"] == ("remove", None)


def test_an_expiring_backup_is_a_candidate_and_keeps_its_own_expiry() -> None:
    backups = [
        {"id": "old", "time": "2026-01-01T10:00:00Z", "status": "EXPIRING"},
        {
            "id": "older",
            "time": "2025-12-30T23:00:00Z",
            "status": "EXPIRING",
            "expiresAt": "2026-01-03T00:30:00+00:00",
        },
        {"id": "kept", "time": "2025-12-31T23:00:00Z", "status": "EXPIRING"},
        *BACKUPS[1:],
    ]
    code, plan, _ = simulate(
        backups, {**TIERS, "retentionDaily": "3", "removalDelaySeconds": 600}, "2026-01-03T02:00Z"
    )
    assert code == 0
    found = expiries(plan)
    assert found["kept"] == ("keep", None)  # the plan keeps it again: back to COMPLETED
    assert found["older"] == ("remove", "2026-01-03T00:30:00Z")  # its expiry never moves
    assert found["old"] == ("remove", "2026-01-03T02:10:00Z")  # none given: marked now


@pytest.mark.parametrize(
    ("backups", "policy", "now", "words"),
    [
        (BACKUPS, {"removalDelaySeconds": -1}, None, "removalDelaySeconds must be an integer"),
        (BACKUPS, {"removalDelaySeconds": "60"}, None, "removalDelaySeconds must be an integer"),
        (BACKUPS, {"removalDelaySeconds": True}, None, "removalDelaySeconds must be an integer"),
        (BACKUPS, {"removalDelaySeconds": 2**31}, None, "removalDelaySeconds must be an integer"),
        (BACKUPS, {}, "yesterday", "--now 'yesterday' is not ISO-8601"),
        (BACKUPS, {}, "2026-01-03T02:00:00", "has no UTC offset"),
        (
            [{"id": 1, "time": "2026-01-01T00:00:00Z", "expiresAt": "2026-01-02T00:00:00Z"}],
            {},
            None,
            "expiresAt is only for a backup whose status is EXPIRING",
        ),
        (
            [{"id": 1, "time": "2026-01-01T00:00Z", "status": "EXPIRING", "expiresAt": "soon"}],
            {},
            None,
            "expiresAt 'soon' is not ISO-8601",
        ),
    ],
)
def test_bad_delay_now_or_expiry(backups: Any, policy: Any, now: Any, words: str) -> None:
    code, _, stderr = simulate(backups, policy, now)
    assert code == 2
    assert words in stderr and stderr.count("\n") == 1
