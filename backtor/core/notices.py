"""Failure notifications: the payload's stable schema and its signature, as pure functions.

The body is canonical JSON (sorted keys, no spaces), so the bytes signed are the bytes
sent, and a receiver verifies them before parsing. The signature covers a timestamp too,
so a captured request cannot be replayed later (docs/notifications.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

SCHEMA_VERSION = 1
SIGNATURE_HEADER = "X-Backtor-Signature"
TIMESTAMP_HEADER = "X-Backtor-Timestamp"
EVENT_HEADER = "X-Backtor-Event"
KEY_HEADER = "Idempotency-Key"
SIGNATURE_PREFIX = "sha256="


class NoticeKind(StrEnum):
    BACKUP_FAILED = "backup.failed"
    BACKUP_TIMED_OUT = "backup.timed_out"
    REMOVAL_FAILED = "removal.failed"
    SPEC_AUTO_PAUSED = "spec.auto_paused"
    SPEC_OVERDUE = "spec.overdue"
    SPEC_RECOVERED = "spec.recovered"


@dataclass(frozen=True)
class Notice:
    """One event to tell the spec's receiver about; ``key`` is the same on every retry."""

    kind: NoticeKind
    spec: str
    occurred_at: datetime
    key: str
    workflow_id: str | None = None
    details: Mapping[str, str | int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")


def body_of(notice: Notice) -> bytes:
    """The payload, schema version 1: the bytes that are signed and sent."""
    payload = {
        "schemaVersion": SCHEMA_VERSION,
        "event": notice.kind.value,
        "idempotencyKey": notice.key,
        "spec": notice.spec,
        "occurredAt": notice.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "workflowId": notice.workflow_id,
        "details": dict(notice.details),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``b"<timestamp>." + body``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + digest.hexdigest()


def verify(body: bytes, secret: str, timestamp: int, signature: str) -> bool:
    """What a receiver does (also used by the tests): constant-time comparison."""
    return hmac.compare_digest(sign(body, secret, timestamp), signature)


def headers_for(notice: Notice, body: bytes, secret: str | None, timestamp: int) -> dict[str, str]:
    """Request headers; unsigned (no signature header) when no secret is configured."""
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: notice.kind.value,
        KEY_HEADER: notice.key,
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret, timestamp)
    return headers
