"""The tick's task (evaluate_schedule) and the start pipeline under a herd.

A herd larger than one pass's budget must go on at once (anything else waits at least a
second, so that no pass loops without a pause), and its chunks must fit their claims.
SQLite and the Conductor twin in simulated time; "a slow server" advances the clock on
each start.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import backtor.scheduling.fires as fires
from backtor.conductor.names import CREATE_BACKUP
from backtor.db import counters
from backtor.db.models import Fire, FireStatus
from backtor.scheduling.tick import TickReport, run_tick
from backtor.workers.tasks import _callback_seconds, schedule_passes
from tests.scheduling.conftest import Core


def _herd(core: Core, count: int) -> None:
    for n in range(count):
        core.add_spec(f"herd-{n:02d}", cron="0 0 * * * *", overlap_policy="allow")
    core.advance_to(core.due("herd-00"), plus=0.2)


def _slow_server(core: Core, monkeypatch: pytest.MonkeyPatch, seconds_per_start: float) -> None:
    start = core.twin.start_workflow

    def slow_start(*args: Any, **kwargs: Any) -> str:
        core.advance(seconds_per_start)
        return start(*args, **kwargs)

    monkeypatch.setattr(core.twin, "start_workflow", slow_start)


def _fires(core: Core, status: FireStatus) -> int:
    with core.services.db() as session:
        return int(session.scalar(select(func.count()).where(Fire.status == status.value)) or 0)


def test_a_herd_larger_than_a_pass_is_handed_out_again_at_once(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    _herd(core, 30)
    monkeypatch.setattr(fires, "START_CHUNK", 4)
    _slow_server(core, monkeypatch, 0.5)  # the pass's 4 s budget ends mid-herd
    outcome = schedule_passes(core.services, wait=lambda _s: True, stopping=lambda: False)

    started = _fires(core, FireStatus.STARTED)
    assert 0 < started < 30, started  # the budget cut the pass short
    assert _fires(core, FireStatus.PENDING) == 30 - started
    assert (outcome.status, outcome.output["started"]) == ("IN_PROGRESS", started)
    assert outcome.callback_after_seconds == 0


def test_a_pass_with_nothing_due_waits_for_the_next_fire(core: Core) -> None:
    _herd(core, 3)
    outcome = schedule_passes(core.services, wait=lambda _s: True, stopping=lambda: False)
    assert outcome.output["started"] == 3
    assert outcome.callback_after_seconds >= 1


@pytest.mark.parametrize(
    ("started", "skipped", "healthy", "due_in", "expected"),
    [
        pytest.param(5, 0, True, -0.1, 0, id="herd-left-after-starts"),
        pytest.param(0, 2, True, 0.0, 0, id="herd-left-after-skips"),
        pytest.param(0, 0, True, -0.1, 1, id="due-but-no-progress"),
        pytest.param(5, 0, False, -0.1, 1, id="conductor-unwell"),
        pytest.param(5, 0, True, 2.5, 1, id="next-fire-near"),
        pytest.param(0, 0, True, 30.0, 4, id="next-fire-far"),
    ],
)
def test_the_callback(
    core: Core, started: int, skipped: int, healthy: bool, due_in: float, expected: int
) -> None:
    now = core.now()
    report = TickReport(started, skipped, 0, now + timedelta(seconds=due_in), healthy)
    wait_for = due_in if healthy else max(due_in, 1.0)
    assert _callback_seconds(report, wait_for, stopping=False) == expected
    assert _callback_seconds(report, wait_for, stopping=True) == 0


# -- the start pipeline ------------------------------------------------------------------


def _lapsed_and_started(core: Core, count: int) -> tuple[int, int]:
    """A herd started by start_due alone (no budget): how many claims ran short, how many
    started."""
    _herd(core, count)
    with core.services.db.begin() as session:
        fires.schedule_due_fires(session, core.now())
    outcomes = fires.start_due(core.services, keep_going=lambda: True)
    lapsed = sum(1 for outcome in outcomes if outcome.lapsed)
    started = sum(1 for outcome in outcomes if outcome.status is FireStatus.STARTED)
    return lapsed, started


def test_a_slow_server_gets_smaller_chunks_and_no_claim_runs_short(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10 starts a second, chunks of 64 claimed two ahead would begin their last starts
    12 s after their claim, past START_MARGIN: the pipeline sizes its chunks by the rate it
    measures and claims the next one only when the pool is nearly through."""
    _slow_server(core, monkeypatch, 0.1)
    assert _lapsed_and_started(core, 200) == (0, 200)


def test_a_chunk_is_claimed_only_when_the_pool_is_nearly_through(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[tuple[int, int]] = []  # (limit, fires started before the claim)
    claim = fires.claim_pending

    def counting(session: Any, now: Any, **kwargs: Any) -> Any:
        claims.append((kwargs["limit"], len(core.twin.workflows(CREATE_BACKUP))))
        return claim(session, now, **kwargs)

    monkeypatch.setattr(fires, "claim_pending", counting)
    _slow_server(core, monkeypatch, 0.01)
    assert _lapsed_and_started(core, 150) == (0, 150)
    assert claims[0] == (fires.FIRST_CHUNK, 0)
    # Each later chunk waits until the ones before have at most REFILL_AT starts left.
    for i, (_, before) in enumerate(claims[1:], start=1):
        claimed_before = sum(limit for limit, _ in claims[:i])
        assert before >= claimed_before - fires.REFILL_AT, (i, claims)
    assert max(limit for limit, _ in claims) == fires.START_CHUNK  # a fast server: full chunks


@pytest.mark.parametrize(
    ("finished", "elapsed", "expected"),
    [
        pytest.param(0, 0.0, fires.FIRST_CHUNK, id="no-rate-yet"),
        pytest.param(48, 0.0, fires.FIRST_CHUNK, id="no-time-yet"),
        pytest.param(100, 4.0, fires.START_CHUNK, id="fast: 25 a second"),
        pytest.param(40, 4.0, 30, id="10 a second: 3 s of starts"),
        pytest.param(4, 4.0, fires.START_CONCURRENCY, id="1 a second: the pool's width"),
    ],
)
def test_the_chunk_size(finished: int, elapsed: float, expected: int) -> None:
    assert fires._chunk_size(finished, elapsed) == expected


def test_a_claim_that_runs_short_is_no_error_and_leaves_the_pass_healthy(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At one start a second even the first chunk outlasts its claims' start window: the
    fires left over wait for the next pass, and neither the pass nor the metrics call it
    Conductor's fault."""
    _herd(core, 40)
    _slow_server(core, monkeypatch, 1.0)
    report = run_tick(core.services)
    assert report.waiting > 0 and report.healthy, report
    assert _fires(core, FireStatus.PENDING) == 40 - report.started
    with core.services.db() as session:
        rows = counters.read_all(session)
    assert not [row for row in rows if row[0] == counters.TRIGGER and row[2] == "error"], rows


def test_a_pass_after_a_wait_for_the_due_second_gets_what_is_left_of_the_budget(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task sleeps up to HOLD_SECONDS to the exact due time before a pass; that pass's
    budget is what is left of PASS_BUDGET, so the task's whole hold stays bounded."""
    import backtor.workers.tasks as tasks

    core.add_spec("soon", cron="0 0 * * * *")
    core.advance_to(core.due("soon"), plus=-1.5)
    budgets: list[float] = []
    run = tasks.run_tick

    def recording(*args: Any, budget: timedelta, **kwargs: Any) -> TickReport:
        budgets.append(budget.total_seconds())
        return run(*args, budget=budget, **kwargs)

    def wait(seconds: float) -> bool:
        core.advance(seconds)
        return False

    monkeypatch.setattr(tasks, "run_tick", recording)
    outcome = schedule_passes(core.services, wait=wait, stopping=lambda: False)
    assert outcome.output["started"] == 1
    assert budgets[0] == tasks.PASS_BUDGET.total_seconds()
    assert budgets[1] == pytest.approx(tasks.PASS_BUDGET.total_seconds() - 1.5, abs=0.01)
