"""This process's own instruments; the shared figures are derived from the database at scrape time.

Counted in memory, so each replica reports only what it did itself (their HELP text says so):
`backtor_conductor_invocation`, `backtor_api_invocations_total` and `backtor_sql_total`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: noise

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
CONDUCTOR_INVOCATION = Histogram(
    "backtor_conductor_invocation",
    "Calls from this process to Conductor's API (process-local), by operation and HTTP status",
    ["operation", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=PROCESS_REGISTRY,
)
API_INVOCATIONS = Counter(
    "backtor_api_invocations",
    "Requests served by this API process (process-local), by route resource and HTTP status",
    ["entity", "status"],
    registry=PROCESS_REGISTRY,
)
SQL_STATEMENTS = Counter(
    "backtor_sql",
    "SQL statements run by this process (process-local), by outcome: ok or error",
    ["status"],
    registry=PROCESS_REGISTRY,
)


def observe_conductor_call(operation: str, status: str, seconds: float) -> None:
    CONDUCTOR_INVOCATION.labels(operation=operation, status=status).observe(seconds)


def instrument_engine(engine: Engine) -> None:
    """Count `engine`'s statements in backtor_sql_total (once, however often called)."""
    if event.contains(engine, "after_cursor_execute", _statement_ran):
        return
    event.listen(engine, "after_cursor_execute", _statement_ran)
    event.listen(engine, "handle_error", _statement_failed)


def _statement_ran(*_args: Any) -> None:
    SQL_STATEMENTS.labels(status="ok").inc()


def _statement_failed(_context: Any) -> None:
    SQL_STATEMENTS.labels(status="error").inc()


def process_exposition() -> str:
    """This process's instruments in the text format, to append to the shared figures."""
    return generate_latest(PROCESS_REGISTRY).decode("utf-8")
