"""One HTTP POST to a notification receiver (docs/notifications.md), for `deliver_notice`.

It lives beside the Conductor client because only backtor/conductor may hold an HTTP
client (tests/unit/test_import_rules.py). A receiver's URL may carry a token, in its query
string or as user:password: neither ever reaches a log line, an error or a task's reason
in Conductor, so everything here names the receiver by `redact(url)` only, and never
repeats an exception's text (requests puts the whole URL in it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

# A receiver gets this long to answer; a slow one is retried by Conductor, with backoff.
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Posted:
    """How one POST went: `status` is the HTTP status, None when no answer came."""

    status: int | None
    error: str | None = None  # why it did not deliver, safe to log (no query, no secret)

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def redact(url: str) -> str:
    """`scheme://host[:port]/path`: the URL without user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<an unparsable URL>"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = TIMEOUT_SECONDS,
) -> Posted:
    """POST `body` once; 2xx is delivered. Redirects are not followed (a 3xx fails)."""
    where = redact(url)
    try:
        answer = requests.post(
            url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
        )
    except requests.Timeout:
        return Posted(None, f"{where} did not answer within {timeout:g} s")
    except requests.ConnectionError:
        return Posted(None, f"{where} could not be reached (connection failed)")
    except requests.RequestException as exc:
        return Posted(None, f"{where}: the request failed ({type(exc).__name__})")
    with answer:
        status = answer.status_code
    if 200 <= status < 300:
        return Posted(status)
    return Posted(status, f"{where} answered HTTP {status}")
