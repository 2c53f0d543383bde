"""Is a spec's last success recent enough? The rule of the BacktorBackupMissing alert.

The rule lives in backtor.observability.freshness, shared with the scheduler's overdue
notices (backtor.scheduling.notices), so /ui, the alert and the notification agree; /ui
uses it through these names.
"""

from __future__ import annotations

from backtor.observability.freshness import (
    MIN_PERIOD_SECONDS,
    OVERDUE_FACTOR,
    PERIOD_BUDGET_SECONDS,
    Freshness,
    active_since,
    deadline,
    expected_period,
    is_active,
    judge,
)

__all__ = [
    "MIN_PERIOD_SECONDS",
    "OVERDUE_FACTOR",
    "PERIOD_BUDGET_SECONDS",
    "Freshness",
    "active_since",
    "deadline",
    "expected_period",
    "is_active",
    "judge",
]
