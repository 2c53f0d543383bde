"""The notification payload is stable and its signature verifies only the bytes sent."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from backtor.core.notices import (
    SIGNATURE_HEADER,
    Notice,
    NoticeKind,
    body_of,
    headers_for,
    sign,
    verify,
)

NOTICE = Notice(
    NoticeKind.BACKUP_FAILED,
    "nightly",
    datetime(2026, 12, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),
    key="fire-42",
    workflow_id="wf-1",
    details={"status": "FAILED", "reason": "disk full"},
)


def test_the_body_is_canonical_json_of_schema_version_1() -> None:
    body = body_of(NOTICE)
    assert body == (
        b'{"details":{"reason":"disk full","status":"FAILED"},"event":"backup.failed",'
        b'"idempotencyKey":"fire-42","occurredAt":"2026-12-01T12:00:00Z","schemaVersion":1,'
        b'"spec":"nightly","workflowId":"wf-1"}'
    )
    assert json.loads(body)["schemaVersion"] == 1


def test_the_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = body_of(NOTICE)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret", 1_700_000_000) == "sha256=" + expected
    assert verify(body, "s3cret", 1_700_000_000, "sha256=" + expected)


@pytest.mark.parametrize(
    ("body", "secret", "timestamp"),
    [
        (body_of(NOTICE) + b" ", "s3cret", 1_700_000_000),  # the body changed
        (body_of(NOTICE), "other", 1_700_000_000),  # the wrong secret
        (body_of(NOTICE), "s3cret", 1_700_000_001),  # a replay with a new timestamp
    ],
)
def test_anything_changed_fails_verification(body: bytes, secret: str, timestamp: int) -> None:
    good = sign(body_of(NOTICE), "s3cret", 1_700_000_000)
    assert not verify(body, secret, timestamp, good)


def test_headers_carry_event_key_and_signature_only_with_a_secret() -> None:
    body = body_of(NOTICE)
    signed = headers_for(NOTICE, body, "s3cret", 5)
    assert signed["X-Backtor-Event"] == "backup.failed"
    assert signed["Idempotency-Key"] == "fire-42"
    assert signed["X-Backtor-Timestamp"] == "5"
    assert verify(body, "s3cret", 5, signed[SIGNATURE_HEADER])
    assert SIGNATURE_HEADER not in headers_for(NOTICE, body, None, 5)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Notice(NoticeKind.SPEC_OVERDUE, "x", datetime(2026, 1, 1), key="k")
    assert Notice(NoticeKind.SPEC_OVERDUE, "x", datetime(2026, 1, 1, tzinfo=UTC), key="k")
