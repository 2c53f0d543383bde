"""The safety cap: one retention run starts at most maxRemovalsPerRun removals, oldest first.

On a real database (PostgreSQL and SQLite): 32 backups under a policy that keeps only the
newest, one of the oldest pinned, so the plan removes 30; the first run marks the 20 oldest
REMOVING, the next run the other 10, and a third run finds nothing left to do.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from backtor.core.specs import RETENTION_FIELDS, SpecDraft, normalise_spec
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.db.repository import create_spec
from backtor.runtime.settings import Settings
from backtor.scheduling.recording import apply_plan, plan_for

pytestmark = pytest.mark.integration

T0 = datetime(2025, 6, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 3, tzinfo=UTC)
COUNT = 32


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()


@pytest.fixture
def spec(session: Session) -> BackupSpec:
    """A spec keeping only its newest backup, with COUNT hourly backups inserted shuffled.

    Shuffled, so ids do not follow time: "oldest first" must mean by scheduled time.
    """
    draft = SpecDraft(
        name="capped", retention=dict.fromkeys(RETENTION_FIELDS, "0"), allow_keep_newest_only=True
    )
    spec = create_spec(session, normalise_spec(draft), T0)
    hours = list(range(COUNT))
    random.Random(7).shuffle(hours)
    for hour in hours:
        session.add(
            Backup(
                spec_id=spec.id,
                status=BackupStatus.COMPLETED.value,
                scheduled_at=T0 + timedelta(hours=hour),
                data_id=f"data-{hour}",
                pinned=hour == 3,
            )
        )
    session.commit()
    return spec


def by_age(session: Session, spec: BackupSpec) -> list[Backup]:
    session.expire_all()
    query = select(Backup).where(Backup.spec_id == spec.id).order_by(Backup.scheduled_at)
    return list(session.scalars(query))


def test_the_cap_defaults_to_20_and_is_a_global_setting() -> None:
    assert Settings.from_env({}).max_removals_per_run == 20
    assert Settings.from_env({"BACKTOR_MAX_REMOVALS_PER_RUN": "5"}).max_removals_per_run == 5


def test_a_run_starts_at_most_the_cap_oldest_first(session: Session, spec: BackupSpec) -> None:
    cap = Settings.from_env({}).max_removals_per_run
    backups = by_age(session, spec)
    pinned, newest = backups[3], backups[-1]
    to_remove = [b.id for b in backups if b not in (pinned, newest)]
    assert len(to_remove) == 30
    # The plan ignores the cap.
    assert plan_for(session, spec).remove_ids == {str(i) for i in to_remove}

    first = apply_plan(session, spec, NOW, cap)
    session.commit()
    assert first == to_remove[:20]
    marked = {b.id: b for b in by_age(session, spec) if b.status == BackupStatus.REMOVING.value}
    assert set(marked) == set(to_remove[:20])
    assert all(b.next_attempt_at == NOW for b in marked.values())
    # What the cap held back is still planned for removal, and nothing else is.
    assert plan_for(session, spec).remove_ids == {str(i) for i in to_remove[20:]}

    second = apply_plan(session, spec, NOW + timedelta(minutes=1), cap)
    session.commit()
    assert second == to_remove[20:]
    assert apply_plan(session, spec, NOW + timedelta(minutes=2), cap) == []
    session.commit()

    final = {b.id: b.status for b in by_age(session, spec)}
    assert final == {
        **dict.fromkeys(to_remove, BackupStatus.REMOVING.value),
        pinned.id: BackupStatus.COMPLETED.value,
        newest.id: BackupStatus.COMPLETED.value,
    }


def test_a_smaller_cap_spreads_the_removals_over_more_runs(
    session: Session, spec: BackupSpec
) -> None:
    cap = Settings.from_env({"BACKTOR_MAX_REMOVALS_PER_RUN": "7"}).max_removals_per_run
    runs = []
    while chosen := apply_plan(session, spec, NOW, cap):
        session.commit()
        runs.append(chosen)
    assert [len(run) for run in runs] == [7, 7, 7, 7, 2]
    times = {b.id: b.scheduled_at for b in by_age(session, spec)}
    order = [times[i] for run in runs for i in run]
    assert order == sorted(order)  # oldest first, across runs too
