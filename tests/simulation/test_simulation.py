"""The deterministic simulation of the scheduling core (issue "Trust in the scheduling core").

`test_scenarios` plays seeds 0..1999 (--sim-scenarios, --sim-start, --sim-jobs) and fails
listing every failing seed with its one-line replay command. A seed that fails because of
a known, reported defect is listed in KNOWN_DEFECTS: it is left out of the general run and
replayed by its defect's strictly-xfailed test, which fails (XPASS) once the defect is
fixed. Layout: scenario.py (seed -> scenario), world.py (clock, database, twin, actors,
settling), fibers.py (interleaving), api.py (the routes as requests), invariants.py,
runner.py (one seed), minimise.py and replay.py (a failing seed, smaller, step by step).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.simulation.runner import Result, forget_process_state, replay_command, run_seed

# Reported defects, each with the seeds that fail because of it (of the general run, 0..1999,
# or of a longer soak). Those seeds are left out of test_scenarios and replayed by
# test_known_defect, which is a strict xfail: once the defect is fixed it passes, fails as
# XPASS, and the entry goes. Fixed: start-sent-after-the-claim-lapsed (seeds 307, 517, 799,
# 1147) and removal-start-sent-after-the-claim-lapsed (soak seed 20194), by the start fences
# of create_backup and remove_backup (docs/scheduling.md, "The start fence"); their
# regression tests are in tests/scheduling/test_core_defects.py.
KNOWN_DEFECTS: dict[str, tuple[str, tuple[int, ...]]] = {}


def known_seeds() -> set[int]:
    return {seed for _, seeds in KNOWN_DEFECTS.values() for seed in seeds}


def _play(seed: int) -> tuple[int, list[str], float]:
    result = run_seed(seed)
    return seed, result.failures, result.cpu_seconds


def _results(seeds: list[int], jobs: int) -> Iterator[tuple[int, list[str], float]]:
    if jobs <= 1:
        yield from map(_play, seeds)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=forget_process_state) as pool:
        yield from pool.imap_unordered(_play, seeds, chunksize=8)


@pytest.mark.simulation_soak
def test_scenarios(pytestconfig: pytest.Config) -> None:
    """Every seed of the general run settles with every invariant holding."""
    start = pytestconfig.getoption("--sim-start")
    count = pytestconfig.getoption("--sim-scenarios")
    jobs = pytestconfig.getoption("--sim-jobs")
    known = known_seeds()
    seeds = [s for s in range(start, start + count) if s not in known]
    began = time.perf_counter()
    failed: dict[int, list[str]] = {}
    cpu = 0.0
    for seed, failures, cpu_seconds in _results(seeds, jobs):
        cpu += cpu_seconds
        if failures:
            failed[seed] = failures
    elapsed = time.perf_counter() - began
    print(
        f"\n{len(seeds)} scenarios in {elapsed:.1f} s with {jobs} process(es) "
        f"({len(seeds) / elapsed:.1f}/s, {1000 * cpu / max(len(seeds), 1):.0f} ms CPU each)"
    )
    report = [
        f"seed {seed}: {replay_command(seed)}\n    " + "\n    ".join(failures[:5])
        for seed, failures in sorted(failed.items())
    ]
    assert not failed, f"{len(failed)} of {len(seeds)} seeds failed:\n" + "\n".join(report)


@pytest.mark.parametrize(
    "defect",
    [
        pytest.param(defect, marks=pytest.mark.xfail(strict=True, reason=reason), id=defect)
        for defect, (reason, _) in sorted(KNOWN_DEFECTS.items())
    ]
    or [pytest.param(None, marks=pytest.mark.skip(reason="no known defect"), id="none")],
)
@pytest.mark.simulation_soak
def test_known_defect(pytestconfig: pytest.Config, defect: str) -> None:
    """The seeds of a reported defect still fail (strict xfail: a fix turns this red)."""
    _, seeds = KNOWN_DEFECTS[defect]
    failed = {
        seed: failures
        for seed, failures, _ in _results(list(seeds), pytestconfig.getoption("--sim-jobs"))
        if failures
    }
    report = [f"seed {seed}: {failures[0]}" for seed, failures in sorted(failed.items())]
    assert not failed, f"{len(failed)} of {len(seeds)} seeds still fail:\n" + "\n".join(report)


def test_replay(replay_seed: int | None) -> None:
    """`pytest tests/simulation -k replay --seed N`: one seed, its trace printed on failure."""
    if replay_seed is None:
        pytest.skip("no --seed given")
    result = run_seed(replay_seed, verbose=True)
    print(result.scenario.describe())
    if not result.ok:
        for ms, who, what in result.trace:
            print(f"{ms / 1000:9.3f}s {who:>24}  {what}")
    assert result.ok, result.summary()


def test_a_seed_is_deterministic() -> None:
    """Two runs of one seed take the same steps: a failing seed's replay is the failure."""

    def fingerprint(result: Result) -> tuple[object, ...]:
        return tuple(result.trace), tuple(sorted(result.stats.items())), tuple(result.failures)

    first = run_seed(7, verbose=True)
    second = run_seed(7, verbose=True)
    assert fingerprint(first) == fingerprint(second)


# -- the simulation's teeth ---------------------------------------------------------------------
# A defect planted in the scheduling core must be caught: if a change to the harness or the
# scenarios blunts an invariant, these fail. Each tries a seed known to catch its defect first,
# then the first TEETH_SEEDS seeds (a changed generator costs time, not the test).
TEETH_SEEDS = 60


def _skip_rows_vanish(monkeypatch: pytest.MonkeyPatch) -> None:
    import backtor.scheduling.fires as fires

    insert = fires._insert_fires

    def without_skips(session: Any, rows: Any) -> None:
        insert(session, [row for row in rows if row["status"] != "SKIPPED"])

    monkeypatch.setattr(fires, "_insert_fires", without_skips)


def _never_adopt(monkeypatch: pytest.MonkeyPatch) -> None:
    import backtor.scheduling.fires as fires

    monkeypatch.setattr(fires, "_started_for", lambda job, workflows: None)


def _retention_marks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import backtor.scheduling.handlers as handlers
    import backtor.scheduling.outcomes as outcomes
    import backtor.scheduling.recording as recording

    apply_plan = recording.apply_plan

    def capped_at_zero(session: Any, spec: Any, now: Any, max_removals: int) -> list[int]:
        return apply_plan(session, spec, now, 0)

    for module in (recording, handlers, outcomes):
        monkeypatch.setattr(module, "apply_plan", capped_at_zero)


def _watchdog_sees_no_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    import backtor.scheduling.watchdog as watchdog

    monkeypatch.setattr(watchdog, "stalled", lambda *args: False)


def _watchdog_keeps_the_youngest(monkeypatch: pytest.MonkeyPatch) -> None:
    import backtor.scheduling.watchdog as watchdog

    def youngest_first(runs: Any, key: Any) -> Any:
        return sorted(runs, key=key, reverse=True)

    monkeypatch.setattr(watchdog, "sorted", youngest_first, raising=False)


def _failures_never_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    import backtor.scheduling.recording as recording

    monkeypatch.setattr(recording, "reset_failures", lambda session, spec_id: None)


def _expiry_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox promotes every EXPIRING backup, expired or not."""
    from sqlalchemy import update

    import backtor.scheduling.removals as removals
    from backtor.db.models import Backup

    def promote_all(session: Any, now: Any, limit: int, part: Any = None) -> int:
        expiring = (Backup.status == "EXPIRING") & Backup.pinned.is_(False)
        moved = {"status": "REMOVING", "next_attempt_at": now}
        session.execute(update(Backup).where(expiring).values(**moved))
        return 0

    monkeypatch.setattr(removals, "promote_expired", promote_all)


@pytest.mark.parametrize(
    ("plant", "caught_by", "known"),
    [
        pytest.param(_skip_rows_vanish, "was due but has no fire row", 1, id="skips-not-written"),
        pytest.param(_never_adopt, "the ledger lost the run", 70, id="lost-start-not-adopted"),
        pytest.param(_retention_marks_nothing, "should be removed", 0, id="retention-removes-none"),
        pytest.param(_watchdog_sees_no_stall, "[8 the tick lives]", 22, id="dead-tick-kept"),
        pytest.param(_watchdog_keeps_the_youngest, "[7 one tick]", 0, id="youngest-tick-kept"),
        pytest.param(_failures_never_reset, "[9 auto-pause]", 3, id="failures-never-reset"),
        pytest.param(_expiry_not_waited_for, "before the backup's", 7, id="expiry-ignored"),
    ],
)
def test_a_planted_defect_is_caught(
    monkeypatch: pytest.MonkeyPatch,
    plant: Callable[[pytest.MonkeyPatch], None],
    caught_by: str,
    known: int,
) -> None:
    plant(monkeypatch)
    for seed in [known, *range(TEETH_SEEDS)]:
        if any(caught_by in failure for failure in run_seed(seed).failures):
            return
    pytest.fail(f"no seed of {known}, 0..{TEETH_SEEDS - 1} reported {caught_by!r}")
