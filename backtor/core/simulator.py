"""`backtor retention simulate`: print the retention plan for a JSON list of backups.

A stable contract for people trying a policy before they set it (docs/retention.md):
input and output are JSON; bad input exits 2 with one line on stderr and nothing
on stdout, so a script can tell "your input is wrong" from "here is the plan".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backtor.core.errors import BacktorError
from backtor.core.policy import PolicyError, RetentionPolicy
from backtor.core.retention import COMPLETED, BackupRecord, RetentionPlan, plan_retention

BAD_INPUT = 2
_FIELDS = frozenset({"id", "time", "status", "pinned"})


class InputError(BacktorError, ValueError):
    """Input the simulator refuses; the message is the one line printed (no API field)."""


def _parse_policy(text: str) -> RetentionPolicy:
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InputError(f"--policy is not valid JSON: {error}") from None
    if not isinstance(fields, dict):
        raise InputError("--policy must be a JSON object of retention* fields")
    try:
        return RetentionPolicy.from_fields(fields)
    except PolicyError as error:
        raise InputError(f"--policy: {error.message}") from None


def _parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InputError(
            f"--timezone {name!r} is not a known IANA time zone (e.g. UTC, Europe/Berlin)"
        ) from None


def _read_input(input_path: str | None, stdin: TextIO) -> str:
    if input_path is None:
        return stdin.read()
    try:
        with open(input_path, encoding="utf-8") as source:
            return source.read()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read --input {input_path!r}: {error}") from None


def _parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise InputError(f"{where}: time must be an ISO-8601 string, got {json.dumps(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{where}: time {value!r} is not ISO-8601") from None
    if moment.utcoffset() is None:
        raise InputError(f"{where}: time {value!r} has no UTC offset (add Z or e.g. +01:00)")
    return moment


def _parse_backup(item: object, index: int) -> tuple[BackupRecord, Any]:
    """One input object -> (record, the id exactly as given, for the output)."""
    where = f"backup #{index}"
    if not isinstance(item, dict):
        raise InputError(f"{where} must be a JSON object, got {json.dumps(item)[:60]}")
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise InputError(
            f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_FIELDS))}"
        )
    if "id" not in item or "time" not in item:
        raise InputError(f"{where}: id and time are required")
    raw_id = item["id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise InputError(f"{where}: id must be a string or an integer, got {json.dumps(raw_id)}")
    where = f"backup {json.dumps(raw_id)}"
    status = item.get("status", COMPLETED)
    if not isinstance(status, str):
        raise InputError(f"{where}: status must be a string, got {json.dumps(status)}")
    pinned = item.get("pinned", False)
    if not isinstance(pinned, bool):
        raise InputError(f"{where}: pinned must be true or false, got {json.dumps(pinned)}")
    record = BackupRecord(str(raw_id), _parse_time(item["time"], where), status, pinned)
    return record, raw_id


def _parse_backups(text: str) -> tuple[list[BackupRecord], dict[str, Any]]:
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InputError(f"input is not valid JSON: {error}") from None
    if not isinstance(items, list):
        raise InputError("input must be a JSON array of backups")
    records: list[BackupRecord] = []
    given_ids: dict[str, Any] = {}
    for index, item in enumerate(items):
        record, raw_id = _parse_backup(item, index)
        if record.id in given_ids:
            raise InputError(f"duplicate backup id {json.dumps(raw_id)}")
        given_ids[record.id] = raw_id
        records.append(record)
    return records, given_ids


def _render(plan: RetentionPlan, given_ids: Mapping[str, Any]) -> str:
    backups = [
        {
            "id": given_ids[decision.id],
            "tags": [tag.value for tag in decision.tags],
            "action": decision.action,
            "reasons": list(decision.reasons),
        }
        for decision in plan.decisions
    ]
    return json.dumps({"backups": backups}, indent=2) + "\n"


def run_simulation(
    *,
    policy: str,
    timezone: str,
    input_path: str | None,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Plan the backups read from ``input_path`` (or stdin); 0 on success, 2 on bad input."""
    try:
        retention = _parse_policy(policy)
        zone = _parse_zone(timezone)
        records, given_ids = _parse_backups(_read_input(input_path, stdin))
        try:
            plan = plan_retention(records, retention, zone)
        except ValueError as error:  # e.g. a time whose local date is out of range
            raise InputError(str(error)) from None
        output = _render(plan, given_ids)
    except InputError as error:
        message = " ".join(str(error).split())  # exactly one line
        stderr.write(f"backtor retention simulate: {message}\n")
        return BAD_INPUT
    stdout.write(output)
    return 0
