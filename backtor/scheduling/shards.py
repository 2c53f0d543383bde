"""Tick shards: K tick workflows, shard i owning the specs with `spec_id % K == i`.

K (`scheduler_state.tick_shards`, row SCHEDULER_STATE_ID) is written by the watchdog from
its BACKTOR_TICK_SHARDS; each pass reads it at its start and selects only its own specs'
rows (due specs, fires, runs, removals, restores and verifications). At-most-once never
rested on the partition: fire and removal claims and the start fence keep two passes that
overlap (the old partition's and the new one's, during a change of K) from starting
anything twice. docs/scheduling.md, "Shards".

Statements stay built once: each selection has a whole form (K = 1: exactly the statement
as it was) and a sharded form with `spec_id % :shard_count = :shard_index`, bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Integer, bindparam, select
from sqlalchemy.orm import Session

from backtor.db.inserts import dialect_insert
from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState, shard_state_id

S = TypeVar("S")

_COUNT = bindparam("shard_count", type_=Integer())
_INDEX = bindparam("shard_index", type_=Integer())


def owned(spec_id: Any) -> ColumnElement[bool]:
    """SQL: the row's spec belongs to the pass's shard (parameters from Part.params)."""
    return (spec_id % _COUNT) == _INDEX  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Part:
    """The partition a pass works on: shard `index` of `count`."""

    index: int = 0
    count: int = 1

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def retired(self) -> bool:
        """A shard the number in force no longer has: its tick ends."""
        return self.index >= self.count

    @property
    def notices(self) -> bool:
        """Notifications stay with shard 0."""
        return self.index == 0

    @property
    def row(self) -> int:
        return shard_state_id(self.index)

    def pick(self, whole: S, sharded: S) -> tuple[S, dict[str, int]]:
        """The statement to run and the parameters the sharded form needs."""
        if self.whole:
            return whole, {}
        return sharded, {"shard_count": self.count, "shard_index": self.index}


WHOLE = Part()

_SHARDS = select(SchedulerState.tick_shards).where(SchedulerState.id == SCHEDULER_STATE_ID)


def shards_in_force(session: Session) -> int:
    """K, as the watchdog last wrote it (1 before any watchdog ran)."""
    return max(1, session.scalar(_SHARDS) or 1)


def part_of(session: Session, shard: int) -> Part:
    return Part(shard, shards_in_force(session))


def ensure_state_row(session: Session, row: int) -> None:
    """Create a shard's scheduler_state row when absent (insert-or-ignore: replicas race)."""
    session.execute(
        dialect_insert(session, SchedulerState)
        .values(id=row, tick_shards=1)
        .on_conflict_do_nothing(index_elements=["id"])
    )
