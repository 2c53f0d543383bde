"""Consecutive failures counted under concurrent recordings, on PostgreSQL.

Two transactions each record a failure of one spec, both having read the spec before the
other's UPDATE committed: the second waits on the row lock the first's UPDATE holds, then
adds one to the committed value (`consecutive_failures + 1`, in SQL). A count computed in
Python from the loaded rows would lose one. The threshold is reached once, by whichever
recording reached it, and the spec is paused once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import BackupSpec
from backtor.db.repository import create_spec
from backtor.scheduling.recording import FailureRecorded, count_failure
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


def test_two_concurrent_failures_both_count_and_the_spec_pauses_once(engine: Engine) -> None:
    sessions: sessionmaker[Session] = make_session_factory(engine)
    with sessions.begin() as session:
        draft = SpecDraft(name="race", backup_cron_string="0 0 * * * *")
        spec_id = create_spec(session, normalise_spec(draft), NOW).id
        session.execute(
            update(BackupSpec).where(BackupSpec.id == spec_id).values(auto_pause_after_failures=2)
        )

    first = sessions()
    second = sessions()
    results: dict[str, FailureRecorded] = {}
    try:
        first_spec = first.get(BackupSpec, spec_id)
        second_spec = second.get(BackupSpec, spec_id)  # both read count 0, enabled
        assert first_spec is not None and second_spec is not None
        assert first_spec.consecutive_failures == second_spec.consecutive_failures == 0
        results["first"] = count_failure(first, first_spec, NOW, "first failure")

        def record_second() -> None:
            results["second"] = count_failure(second, second_spec, NOW, "second failure")
            second.commit()

        thread = threading.Thread(target=record_second)
        thread.start()
        wait_until(lambda: waiting_on_a_lock(engine), timeout=30, what="the second waiting")
        first.commit()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        first.close()
        second.close()

    assert (results["first"].consecutive, results["first"].paused) == (1, False)
    assert (results["second"].consecutive, results["second"].paused) == (2, True)
    with sessions() as session:
        row = session.execute(
            select(
                BackupSpec.consecutive_failures,
                BackupSpec.enabled,
                BackupSpec.next_fire_at,
                BackupSpec.paused_reason,
            ).where(BackupSpec.id == spec_id)
        ).one()
    assert tuple(row) == (
        2,
        False,
        None,
        "auto-paused after 2 consecutive failed backups; last: second failure",
    )


def test_many_concurrent_failures_count_exactly(engine: Engine) -> None:
    sessions: sessionmaker[Session] = make_session_factory(engine)
    with sessions.begin() as session:
        draft = SpecDraft(name="herd", backup_cron_string="0 0 * * * *")
        spec_id = create_spec(session, normalise_spec(draft), NOW).id
        session.execute(
            update(BackupSpec).where(BackupSpec.id == spec_id).values(auto_pause_after_failures=5)
        )
    start = threading.Barrier(8)
    outcomes: list[FailureRecorded] = []
    lock = threading.Lock()

    def record(index: int) -> None:
        with sessions.begin() as session:
            spec = session.get(BackupSpec, spec_id)
            assert spec is not None
            start.wait(timeout=30)
            outcome = count_failure(session, spec, NOW, f"failure {index}")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(o.consecutive for o in outcomes) == list(range(1, 9))
    assert [o.consecutive for o in outcomes if o.paused] == [5]
    with sessions() as session:
        spec = session.get(BackupSpec, spec_id)
        assert spec is not None
        assert (spec.consecutive_failures, spec.enabled) == (8, False)
