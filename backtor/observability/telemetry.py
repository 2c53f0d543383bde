"""Process-local instruments; the shared figures are derived from the database at scrape time."""

from __future__ import annotations

from prometheus_client import Histogram

CONDUCTOR_INVOCATION = Histogram(
    "backtor_conductor_invocation",
    "Calls from this process to Conductor's API (process-local), by operation and HTTP status",
    ["operation", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def observe_conductor_call(operation: str, status: str, seconds: float) -> None:
    CONDUCTOR_INVOCATION.labels(operation=operation, status=status).observe(seconds)
