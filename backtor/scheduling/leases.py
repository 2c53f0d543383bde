"""Leases on the one scheduler_state row: who may act now, until when.

Two live there: the watchdog's (which replica looks after the tick) and the pass lease (one
scheduler pass at a time). Taking one is a single conditional UPDATE, so two replicas that
race for it cannot both win; its holder renews it by taking it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import InstrumentedAttribute

from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState
from backtor.runtime.services import Services


def take(
    services: Services,
    holder_column: InstrumentedAttribute[str | None],
    until_column: InstrumentedAttribute[datetime | None],
    holder: str,
    now: datetime,
    length: timedelta,
    **also: Any,
) -> bool:
    """Take or renew the lease for `holder` (setting `also` with it); False when held."""
    with services.db.begin() as session:
        taken = session.execute(
            update(SchedulerState)
            .where(
                SchedulerState.id == SCHEDULER_STATE_ID,
                or_(holder_column == holder, until_column.is_(None), until_column < now),
            )
            .values({holder_column: holder, until_column: now + length, **also})
            .returning(SchedulerState.id)
        ).first()
    return taken is not None


def release(
    services: Services,
    holder_column: InstrumentedAttribute[str | None],
    until_column: InstrumentedAttribute[datetime | None],
    holder: str,
) -> None:
    with services.db.begin() as session:
        session.execute(
            update(SchedulerState)
            .where(SchedulerState.id == SCHEDULER_STATE_ID, holder_column == holder)
            .values({until_column: None})
        )
