"""Tick shards (docs/scheduling.md, "Shards"): K tick workflows, shard i owning the specs
with `spec_id % K == i`, K changing while fires fall due.

SQLite and the Conductor twin in simulated time. Specs fire every 10 s under
overlapPolicy `allow`, so a run still open never makes a fire SKIPPED: every fire time must
end STARTED, exactly once, unless a true reason says otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, update

from backtor.conductor.names import CREATE_BACKUP, TICK, tick_correlation_id
from backtor.core.errors import ConductorUnavailable
from backtor.db.models import SCHEDULER_STATE_ID, Fire, FireStatus, SchedulerState
from backtor.runtime.services import Services
from backtor.scheduling.fires import _attempt_starts, claim_pending, schedule_due_fires
from backtor.scheduling.shards import WHOLE, Part
from backtor.scheduling.tick import run_tick
from backtor.scheduling.watchdog import ensure_tick
from backtor.workers.tasks import schedule_passes, shard_of
from tests.scheduling.conftest import Core

EVERY_10S = "*/10 * * * * *"


def set_shards(core: Core, shards: int) -> None:
    """K as the watchdog writes it."""
    with core.services.db.begin() as session:
        session.execute(
            update(SchedulerState)
            .where(SchedulerState.id == SCHEDULER_STATE_ID)
            .values(tick_shards=shards)
        )


def add_specs(core: Core, count: int) -> dict[int, str]:
    """`count` specs firing every 10 s, by id."""
    specs = {}
    for n in range(count):
        spec = core.add_spec(f"shard-spec-{n}", cron=EVERY_10S, overlap_policy="allow")
        specs[spec.id] = spec.name
    return specs


def fires(core: Core) -> list[Any]:
    with core.services.db() as session:
        return list(
            session.execute(
                select(
                    Fire.id,
                    Fire.spec_id,
                    Fire.scheduled_at,
                    Fire.status,
                    Fire.skip_reason,
                    Fire.workflow_id,
                ).order_by(Fire.scheduled_at, Fire.spec_id)
            )
        )


def runs_per_fire(core: Core) -> Counter[int | None]:
    return Counter(run.fire_id for run in core.twin.workflows(CREATE_BACKUP))


def assert_each_fire_started_once(core: Core) -> None:
    runs = runs_per_fire(core)
    assert all(count == 1 for count in runs.values()), runs
    for fire in fires(core):
        if fire.status == FireStatus.STARTED.value:
            assert runs[fire.id] == 1, fire


def all_shards_pass(core: Core, shards: int) -> int:
    """Each shard's pass once, shard by shard; returns how many fires they started."""
    return sum(run_tick(core.services, shard=shard).started for shard in range(shards))


# -- the partition filter -----------------------------------------------------------------


def test_a_shard_starts_only_its_own_specs(core: Core) -> None:
    specs = add_specs(core, 7)
    set_shards(core, 3)
    core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)

    report = run_tick(core.services, shard=1)

    started = {run.correlation_id for run in core.twin.workflows(CREATE_BACKUP)}
    assert started == {name for spec_id, name in specs.items() if spec_id % 3 == 1}
    assert report.started == len(started)
    # The others' due times were not touched: their fires are not even written yet.
    assert {fire.spec_id % 3 for fire in fires(core)} == {1}
    # Its next look is about its own specs only (theirs are due now, its own in 10 s).
    assert report.next_due is not None and report.next_due > core.now()


def test_with_one_shard_the_pass_takes_every_spec(core: Core) -> None:
    specs = add_specs(core, 5)
    core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)
    assert run_tick(core.services).started == 5  # K = 1, shard 0: as before shards


def test_the_sharded_reads_select_the_shards_rows_only(core: Core) -> None:
    """Claiming and scheduling through the filter, outside a whole pass."""
    specs = add_specs(core, 6)
    core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now(), part=Part(0, 2))
        jobs = claim_pending(session, core.now(), part=Part(0, 2))
    assert sorted(job.spec_id for job in jobs) == sorted(i for i in specs if i % 2 == 0)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now(), part=Part(1, 2))
        assert claim_pending(session, core.now(), part=Part(0, 2)) == []  # all claimed
        jobs = claim_pending(session, core.now(), part=Part(1, 2))
    assert sorted(job.spec_id for job in jobs) == sorted(i for i in specs if i % 2 == 1)


def test_a_shard_beyond_the_number_in_force_ends_its_tick(core: Core) -> None:
    specs = add_specs(core, 3)
    set_shards(core, 2)
    core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)

    report = run_tick(core.services, shard=2)
    assert report.retired and report.started == 0
    outcome = schedule_passes(
        core.services, wait=lambda _seconds: True, stopping=lambda: False, shard=2
    )
    assert outcome.status == "COMPLETED" and outcome.output["retired"] is True
    assert core.twin.workflows(CREATE_BACKUP) == []


def test_the_task_reads_its_shard_from_its_input() -> None:
    assert shard_of({}) == 0
    assert shard_of({"shard": None}) == 0  # ${workflow.input.shard} of a tick started before
    assert shard_of({"shard": 2}) == 2
    assert shard_of({"shard": "x"}) == 0


# -- two shards together ----------------------------------------------------------------


def test_two_shards_passes_together_start_each_due_fire_exactly_once(core: Core) -> None:
    """Shard 1's whole pass runs inside shard 0's start (two replicas, two ticks)."""
    specs = add_specs(core, 8)
    set_shards(core, 2)
    start = core.twin.start_workflow
    inner: list[int] = []

    def start_while_the_other_shard_passes(*args: Any, **kwargs: Any) -> str:
        if not inner:
            inner.append(-1)  # its own starts go straight through
            inner[0] = run_tick(core.services, holder="replica-b", shard=1).started
        return start(*args, **kwargs)

    core.twin.start_workflow = start_while_the_other_shard_passes  # type: ignore[method-assign]
    for _ in range(3):  # three fire times
        core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)
        inner.clear()
        outer = run_tick(core.services, holder="replica-a", shard=0).started
        assert inner[0] == 4 and outer == 4  # both ran at once, each its own half

    assert_each_fire_started_once(core)
    assert len(fires(core)) == 24
    assert all(fire.status == FireStatus.STARTED.value for fire in fires(core))


def test_a_pass_of_the_old_partition_overlapping_the_new_one_starts_nothing_twice(
    core: Core,
) -> None:
    """K goes 1 -> 3 while a K=1 pass runs: the new shards' passes run inside its start."""
    specs = add_specs(core, 6)
    start = core.twin.start_workflow
    inner: list[int] = []

    def new_partition_passes(*args: Any, **kwargs: Any) -> str:
        if not inner:
            inner.append(-1)  # their own starts go straight through
            set_shards(core, 3)  # the watchdog wrote K = 3 meanwhile
            inner[0] = sum(run_tick(core.services, shard=s).started for s in range(3))
        return start(*args, **kwargs)

    core.twin.start_workflow = new_partition_passes  # type: ignore[method-assign]
    core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)
    old = run_tick(core.services, holder="old-partition").started

    assert (old, inner[0]) == (6, 0)  # the old pass claimed all six first: claims held them
    assert_each_fire_started_once(core)


# -- K changing ---------------------------------------------------------------------------


def test_k_going_1_3_2_between_passes_loses_and_doubles_no_fire(core: Core) -> None:
    specs = add_specs(core, 9)
    first_due = max(core.due(name) for name in specs.values())
    plan = [1, 1, 3, 3, 2, 2, 3, 1]
    for shards in plan:
        set_shards(core, shards)
        core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)
        # A tick of a shard beyond K, still polled once before it ends, takes nothing.
        assert run_tick(core.services, shard=shards).retired
        all_shards_pass(core, shards)

    assert_each_fire_started_once(core)
    by_spec = Counter(fire.spec_id for fire in fires(core))
    assert by_spec == dict.fromkeys(specs, len(plan))
    for fire in fires(core):
        assert fire.status == FireStatus.STARTED.value, fire
        assert fire.scheduled_at >= first_due


def test_a_fire_claimed_by_the_old_partition_is_adopted_not_started_again(core: Core) -> None:
    """K = 1's pass claims a fire and starts it, then dies before recording; K becomes 3.

    The new owner leaves the fire while the old claim lives, then retries it: the retry
    looks up the spec's runs, finds the run carrying its fireId and adopts it.
    """
    spec = core.add_spec("claimed", cron="0 */5 * * * *")
    core.advance_to(core.due("claimed"), plus=0.2)
    with core.services.db.begin() as session:
        schedule_due_fires(session, core.now(), part=WHOLE)
        (job,) = claim_pending(session, core.now(), part=WHOLE)
    (lost,) = _attempt_starts(core.services, [job])  # started; the process dies here
    set_shards(core, 3)
    owner = spec.id % 3

    core.advance(1)
    assert run_tick(core.services, shard=owner).started == 0  # the old claim still lives
    core.advance(12)  # the claim lapsed
    report = run_tick(core.services, shard=owner)

    (fire,) = fires(core)
    assert fire.status == FireStatus.STARTED.value and fire.workflow_id == lost.workflow_id
    assert report.started == 1
    assert len(core.twin.workflows(CREATE_BACKUP)) == 1


def test_a_fire_due_while_its_new_shard_had_no_tick_yet_is_started_within_grace(
    core: Core,
) -> None:
    """K rose to 3 and shard 2's tick took 8 s to come: its fire starts late, not lost."""
    specs = add_specs(core, 3)
    set_shards(core, 3)
    core.advance_to(max(core.due(name) for name in specs.values()), plus=0.2)
    run_tick(core.services, shard=0)
    run_tick(core.services, shard=1)
    core.advance(8)
    assert run_tick(core.services, shard=2).started == 1
    assert_each_fire_started_once(core)
    assert all(fire.status == FireStatus.STARTED.value for fire in fires(core))


# -- the watchdog -------------------------------------------------------------------------


def watchdog(core: Core, shards: int, holder: str = "watchdog-a") -> str | None:
    settings = replace(core.services.settings, tick_shards=shards)
    services = Services(
        settings=settings,
        engine=core.services.engine,
        db=core.services.db,
        conductor=core.twin,
        clock=core.clock,
    )
    return ensure_tick(services, holder)


def open_ticks(core: Core) -> dict[str, list[Any]]:
    ticks: dict[str, list[Any]] = {}
    for run in core.twin.workflows(TICK):
        if run.status.is_open:
            ticks.setdefault(run.correlation_id or "", []).append(run)
    return ticks


def shards_in_db(core: Core) -> int:
    with core.services.db() as session:
        value = session.scalar(
            select(SchedulerState.tick_shards).where(SchedulerState.id == SCHEDULER_STATE_ID)
        )
    assert value is not None
    return value


def test_the_watchdog_keeps_one_tick_per_shard_and_ends_the_retired_ones(core: Core) -> None:
    first = watchdog(core, 1)
    assert shards_in_db(core) == 1
    assert set(open_ticks(core)) == {tick_correlation_id(0)}

    assert watchdog(core, 3) == first  # shard 0's tick is kept as it was
    assert shards_in_db(core) == 3
    ticks = open_ticks(core)
    assert set(ticks) == {tick_correlation_id(s) for s in range(3)}
    assert all(len(runs) == 1 for runs in ticks.values())
    assert [ticks[tick_correlation_id(s)][0].input.get("shard") for s in (1, 2)] == [1, 2]
    with core.services.db() as session:
        rows = session.scalars(select(SchedulerState.id).order_by(SchedulerState.id)).all()
    assert list(rows) == [1, 2, 3]  # each shard's lease row, created on demand

    assert not run_tick(core.services, shard=2).retired  # K rose before its tick started

    watchdog(core, 2)
    assert shards_in_db(core) == 2
    assert set(open_ticks(core)) == {tick_correlation_id(s) for s in range(2)}


def test_k_drops_only_once_the_retired_ticks_are_terminated(core: Core) -> None:
    """A watchdog that fails halfway through lowering K leaves the old K: the next run
    terminates what is left, then writes the new K."""
    watchdog(core, 3)
    terminate = core.twin.terminate_workflow
    calls: list[str] = []

    def fails_after_the_first(workflow_id: str, reason: str) -> None:
        calls.append(workflow_id)
        if len(calls) > 1:
            raise ConductorUnavailable("Conductor went away")
        terminate(workflow_id, reason)

    core.twin.terminate_workflow = fails_after_the_first  # type: ignore[method-assign]
    with pytest.raises(ConductorUnavailable):
        watchdog(core, 1)
    assert shards_in_db(core) == 3  # shard 2's tick still runs: K stays
    assert set(open_ticks(core)) == {tick_correlation_id(0), tick_correlation_id(2)}
    core.twin.terminate_workflow = terminate  # type: ignore[method-assign]
    core.advance(7)  # the failed run's lease lapsed; another replica's watchdog takes over
    watchdog(core, 1, holder="watchdog-b")
    assert shards_in_db(core) == 1
    assert set(open_ticks(core)) == {tick_correlation_id(0)}


@pytest.mark.parametrize("shard", [1, 2])
def test_a_shard_tick_that_stops_beating_is_replaced(core: Core, shard: int) -> None:
    watchdog(core, 3)
    for s in range(3):
        run_tick(core.services, shard=s)  # every shard beats
    stuck = open_ticks(core)[tick_correlation_id(shard)][0].workflow_id
    core.advance(6)
    for s in range(3):
        if s != shard:
            run_tick(core.services, shard=s)
    core.advance(6)  # 12 s without a beat from `shard`, 6 s from the others
    for s in range(3):
        if s != shard:
            run_tick(core.services, shard=s)
    watchdog(core, 3)
    ticks = open_ticks(core)
    assert set(ticks) == {tick_correlation_id(s) for s in range(3)}
    assert ticks[tick_correlation_id(shard)][0].workflow_id != stuck
    assert core.twin.get_workflow(stuck).status.is_finished


def test_a_sweep_ends_a_tick_started_beyond_k_by_a_replica_that_lost_its_lease(
    core: Core,
) -> None:
    watchdog(core, 2)
    stray = core.twin.start_workflow(
        TICK, version=2, correlation_id=tick_correlation_id(5), input={"shard": 5}
    )
    watchdog(core, 2)  # looks at the shards in force only
    assert core.twin.get_workflow(stray).status.is_open
    settings = replace(core.services.settings, tick_shards=2)
    services = Services(
        settings=settings,
        engine=core.services.engine,
        db=core.services.db,
        conductor=core.twin,
        clock=core.clock,
    )
    ensure_tick(services, "watchdog-a", sweep=True)
    assert core.twin.get_workflow(stray).status.is_finished
    assert set(open_ticks(core)) == {tick_correlation_id(0), tick_correlation_id(1)}
