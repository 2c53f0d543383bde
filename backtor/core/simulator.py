"""`backtor retention simulate`: print the retention plan for a JSON list of backups.

A stable contract for people trying a policy before they set it (docs/retention.md):
input and output are JSON; bad input exits 2 with one line on stderr and nothing
on stdout, so a script can tell "your input is wrong" from "here is the plan".

A removal delay (`removalDelaySeconds` in --policy) and the moment the plan is applied
(--now) add `expiresAt` to each output entry: when a backup the plan removes would have its
removal started, as the service marks it EXPIRING. EXPIRING input backups are candidates
(the plan may keep them again), as in the service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backtor.core.errors import BacktorError
from backtor.core.policy import PolicyError, RetentionPolicy
from backtor.core.retention import COMPLETED, BackupRecord, RetentionPlan, plan_retention

BAD_INPUT = 2
_FIELDS = frozenset({"id", "time", "status", "pinned", "expiresAt"})
DELAY_FIELD = "removalDelaySeconds"
EXPIRING = "EXPIRING"
MAX_DELAY_SECONDS = 2**31 - 1  # the spec column's range


@dataclass(frozen=True)
class Given:
    """What the output needs of one input backup besides the plan: its id exactly as
    given, and for an EXPIRING one its expiresAt (None: not given)."""

    raw_id: Any
    expires_at: datetime | None = None


class InputError(BacktorError, ValueError):
    """Input the simulator refuses; the message is the one line printed (no API field)."""


def _parse_policy(text: str) -> tuple[RetentionPolicy, int | None, bool]:
    """The policy, removalDelaySeconds (None: not given, or null), and whether the policy
    names removalDelaySeconds at all (the output then shows expiresAt)."""
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InputError(f"--policy is not valid JSON: {error}") from None
    if not isinstance(fields, dict):
        raise InputError("--policy must be a JSON object of retention* fields")
    named = DELAY_FIELD in fields
    delay = _parse_delay(fields.pop(DELAY_FIELD)) if named else None
    try:
        return RetentionPolicy.from_fields(fields), delay, named
    except PolicyError as error:
        raise InputError(f"--policy: {error.message}") from None


def _parse_delay(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DELAY_SECONDS:
        raise InputError(
            f"--policy: {DELAY_FIELD} must be an integer from 0 to {MAX_DELAY_SECONDS}, "
            f"got {json.dumps(value)}"
        )
    return value


def _parse_now(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--now {text!r} is not ISO-8601") from None
    if moment.utcoffset() is None:
        raise InputError(f"--now {text!r} has no UTC offset (add Z or e.g. +01:00)")
    return moment


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


def _parse_time(value: object, where: str, name: str = "time") -> datetime:
    if not isinstance(value, str):
        raise InputError(f"{where}: {name} must be an ISO-8601 string, got {json.dumps(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{where}: {name} {value!r} is not ISO-8601") from None
    if moment.utcoffset() is None:
        raise InputError(f"{where}: {name} {value!r} has no UTC offset (add Z or e.g. +01:00)")
    return moment


def _parse_backup(item: object, index: int) -> tuple[BackupRecord, Given]:
    """One input object -> (record, what the output echoes: the id exactly as given and an
    EXPIRING backup's expiresAt)."""
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
    expires_at = None
    if item.get("expiresAt") is not None:
        if status != EXPIRING:
            raise InputError(f"{where}: expiresAt is only for a backup whose status is EXPIRING")
        expires_at = _parse_time(item["expiresAt"], where, "expiresAt")
    # An EXPIRING backup is a candidate, as in the service: the plan may keep it again.
    planned = COMPLETED if status == EXPIRING else status
    record = BackupRecord(str(raw_id), _parse_time(item["time"], where), planned, pinned)
    return record, Given(raw_id, expires_at)


def _parse_backups(text: str) -> tuple[list[BackupRecord], dict[str, Given]]:
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InputError(f"input is not valid JSON: {error}") from None
    if not isinstance(items, list):
        raise InputError("input must be a JSON array of backups")
    records: list[BackupRecord] = []
    given: dict[str, Given] = {}
    for index, item in enumerate(items):
        record, echo = _parse_backup(item, index)
        if record.id in given:
            raise InputError(f"duplicate backup id {json.dumps(echo.raw_id)}")
        given[record.id] = echo
        records.append(record)
    return records, given


@dataclass(frozen=True)
class Expiry:
    """The removal delay and the moment the plan is applied, when either is given."""

    delay: int | None
    now: datetime | None

    def expires_at(self, action: str, given: Given) -> str | None:
        """When a removed backup's removal would start: an EXPIRING one keeps its own
        expiresAt; another one gets now + delay (a delay > 0 and --now both given).
        Null for a kept or ignored backup, and for a removal that starts at once."""
        if action != "remove":
            return None
        moment = given.expires_at
        if moment is None and self.delay and self.now is not None:
            moment = self.now + timedelta(seconds=self.delay)
        if moment is None:
            return None
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _render(plan: RetentionPlan, given: Mapping[str, Given], expiry: Expiry | None) -> str:
    backups = []
    for decision in plan.decisions:
        entry: dict[str, Any] = {
            "id": given[decision.id].raw_id,
            "tags": [tag.value for tag in decision.tags],
            "action": decision.action,
            "reasons": list(decision.reasons),
        }
        if expiry is not None:
            entry["expiresAt"] = expiry.expires_at(decision.action, given[decision.id])
        backups.append(entry)
    return json.dumps({"backups": backups}, indent=2) + "\n"


def run_simulation(
    *,
    policy: str,
    timezone: str,
    input_path: str | None,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    now: str | None = None,
) -> int:
    """Plan the backups read from ``input_path`` (or stdin); 0 on success, 2 on bad input.

    Each entry has `expiresAt` when --policy names removalDelaySeconds or --now is given
    (Expiry.expires_at); otherwise the output is as before the removal delay existed.
    """
    try:
        retention, delay, named = _parse_policy(policy)
        applied_at = _parse_now(now)
        zone = _parse_zone(timezone)
        records, given = _parse_backups(_read_input(input_path, stdin))
        try:
            plan = plan_retention(records, retention, zone)
        except ValueError as error:  # e.g. a time whose local date is out of range
            raise InputError(str(error)) from None
        shown = named or applied_at is not None
        output = _render(plan, given, Expiry(delay, applied_at) if shown else None)
    except InputError as error:
        message = " ".join(str(error).split())  # exactly one line
        stderr.write(f"backtor retention simulate: {message}\n")
        return BAD_INPUT
    stdout.write(output)
    return 0
