"""Leases on scheduler_state rows: who may act now, until when.

Two live there: the watchdog's (which replica looks after the ticks, row SCHEDULER_STATE_ID)
and the pass lease (one scheduler pass at a time per tick shard, in the shard's row).
Taking one is a single conditional UPDATE, so two replicas that
race for it cannot both win; its holder renews it by taking it again.

The statements are built once per lease, on the table (Core): every pass and every
watchdog run takes a lease, and building an ORM UPDATE each time cost five times the
UPDATE itself. Each runs alone in its own session, so there is no loaded object to keep
in step with it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Column, Table, Update, bindparam, inspect, or_, update
from sqlalchemy.orm import InstrumentedAttribute

from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services

_STATE: Table = SchedulerState.__table__  # type: ignore[assignment]


def take(
    services: Services,
    holder_column: InstrumentedAttribute[str | None],
    until_column: InstrumentedAttribute[datetime | None],
    holder: str,
    now: datetime,
    length: timedelta,
    row: int = SCHEDULER_STATE_ID,
    **also: Any,
) -> bool:
    """Take or renew the lease in `row` for `holder` (setting the columns `also` names with
    it); False when another holds it (or the row does not exist)."""
    statement = _take_statement(holder_column.key, until_column.key, tuple(sorted(also)))
    params = {"holder": holder, "now": now, "until": now + length, "row": row}
    params |= {f"also_{key}": value for key, value in also.items()}
    with services.db.begin() as session:
        taken = session.execute(statement, params).first()
    return taken is not None


def take_reading(
    services: Services,
    holder_column: InstrumentedAttribute[str | None],
    until_column: InstrumentedAttribute[datetime | None],
    holder: str,
    now: datetime,
    length: timedelta,
    read: InstrumentedAttribute[Any],
) -> tuple[bool, Any]:
    """As `take`, in the same statement reading the row's column `read` (RETURNING):
    (False, None) when another holds the lease."""
    statement = _take_reading_statement(holder_column.key, until_column.key, read.key)
    params = {"holder": holder, "now": now, "until": now + length, "row": SCHEDULER_STATE_ID}
    with services.db.begin() as session:
        taken = session.execute(statement, params).first()
    return (False, None) if taken is None else (True, taken[1])


def release(
    services: Services,
    holder_column: InstrumentedAttribute[str | None],
    until_column: InstrumentedAttribute[datetime | None],
    holder: str,
    row: int = SCHEDULER_STATE_ID,
) -> None:
    with services.db.begin() as session:
        session.execute(*release_statement(holder_column, until_column, holder, row))


def release_statement(
    holder_column: InstrumentedAttribute[str | None],
    until_column: InstrumentedAttribute[datetime | None],
    holder: str,
    row: int = SCHEDULER_STATE_ID,
) -> tuple[Update, dict[str, Any]]:
    """The release and its parameters, for a caller with a transaction of its own open."""
    return _release_statement(holder_column.key, until_column.key), {"holder": holder, "row": row}


def _column(key: str) -> Column[Any]:
    return inspect(SchedulerState).columns[key]


@cache
def _take_statement(holder_key: str, until_key: str, also: tuple[str, ...]) -> Update:
    holder, until = _column(holder_key), _column(until_key)
    now = bindparam("now", type_=UTCDateTime())
    values: dict[Any, Any] = {
        holder: bindparam("holder", type_=holder.type),
        until: bindparam("until", type_=UTCDateTime()),
    }
    for key in also:
        values[_column(key)] = bindparam(f"also_{key}", type_=_column(key).type)
    return (
        update(_STATE)
        .where(
            _STATE.c.id == bindparam("row", type_=_STATE.c.id.type),
            or_(holder == bindparam("holder", type_=holder.type), until.is_(None), until < now),
        )
        .values(values)
        .returning(_STATE.c.id)
    )


@cache
def _take_reading_statement(holder_key: str, until_key: str, read_key: str) -> Update:
    return _take_statement(holder_key, until_key, ()).returning(_column(read_key))


@cache
def _release_statement(holder_key: str, until_key: str) -> Update:
    holder, until = _column(holder_key), _column(until_key)
    return (
        update(_STATE)
        .where(
            _STATE.c.id == bindparam("row", type_=_STATE.c.id.type),
            holder == bindparam("holder", type_=holder.type),
        )
        .values({until: None})
    )


class Kept:
    """A lease one holder keeps across several steps, written only once past half of it.

    Nobody takes a lease before it lapses, so while more than half of it is left its holder
    knows it still holds it without asking: renewing at every step only rewrote the one row
    every replica contends for. Each step thus begins with at least half the lease left;
    `stamp` (a heartbeat column) is set to the moment of each write.
    """

    def __init__(
        self,
        services: Services,
        holder_column: InstrumentedAttribute[str | None],
        until_column: InstrumentedAttribute[datetime | None],
        holder: str,
        length: timedelta,
        stamp: InstrumentedAttribute[datetime | None] | None = None,
        row: int = SCHEDULER_STATE_ID,
    ) -> None:
        self._services = services
        self.row = row
        self._holder_column = holder_column
        self._until_column = until_column
        self.holder = holder
        self._length = length
        self._half = length / 2
        self._stamp = stamp
        self.until: datetime | None = None  # None: not held (as far as this holder knows)

    def keep(self, now: datetime) -> bool:
        """Take the lease, or renew it once half of it is gone; False when another holds it."""
        if self.until is not None and now < self.until - self._half:
            return True
        also = {} if self._stamp is None else {self._stamp.key: now}
        taken = take(
            self._services,
            self._holder_column,
            self._until_column,
            self.holder,
            now,
            self._length,
            self.row,
            **also,
        )
        self.until = now + self._length if taken else None
        return taken
