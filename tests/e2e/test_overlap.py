"""overlapPolicy end to end: real Conductor, PostgreSQL, Backtor's API and worker processes,
and a storage worker whose `backup` takes DELAY seconds, longer than the spec's period.

Each test reads the fire ledger, Conductor's runs and GET …/materialized, and shows which
fires started, which were skipped (and why) and which runs were terminated; the table is
printed (`-s`) and is in every assertion's message.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from backtor.db.models import SCHEDULER_STATE_ID, Fire, SchedulerState
from backtor.workers.tasks import MAX_CALLBACK_SECONDS
from tests.e2e.conftest import Stack, assert_each_fire_started_once
from tests.support import processes
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

DELAY = 5.0  # seconds one backup takes
TIMEOUT = 60.0  # generous, bounded: every wait below is for a condition
# A fire that waited behind a run starts this soon after the run ended: the tick's next
# pass (at most MAX_CALLBACK_SECONDS away) sees the end, and the pass right after starts it.
BUFFER_START_BOUND = MAX_CALLBACK_SECONDS + 4.0
TERMINATED = re.compile(
    r"terminated by overlapPolicy terminateOther for the (fire|manual backup requested) at "
    r"(?P<at>\S+) \(fire (?P<fire>\d+)\)"
)


def tick_alive(stack: Stack) -> bool:
    """A pass of this stack's tick ran within the last seconds (its heartbeat)."""
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session:
            beat = session.scalar(
                select(SchedulerState.last_tick_at).where(SchedulerState.id == SCHEDULER_STATE_ID)
            )
    finally:
        engine.dispose()
    return beat is not None and (datetime.now(UTC) - beat).total_seconds() < 6


def wait_for_tick(stack: Stack) -> None:
    """Specs are created once the tick runs: a tick a previous test left in Conductor is
    replaced first (the watchdog's STALL), and fires due meanwhile would only misfire."""
    wait_until(lambda: tick_alive(stack), timeout=TIMEOUT, what="the scheduler's tick")


@contextmanager
def slow_backups(stack: Stack) -> Iterator[None]:
    """Every test's setup: a storage whose backups take DELAY seconds (and, as the real
    storage worker, keep no file for a cancelled task), Backtor's workers, and the tick
    running before any spec is made."""
    stack.storage.delay = DELAY
    stack.storage.keep_only_wanted = True
    with processes.workers(stack.env, stack.logs):
        wait_for_tick(stack)
        yield


@contextmanager
def fired_under(stack: Stack, policy: str, cron: str) -> Iterator[str]:
    """A spec under `policy` whose fires (on `cron`, from soon()) come faster than a backup
    takes; yields its name. The block waits for what the test is about; then the spec is
    disabled (its policy kept) and everything of it settles, the workers stop, the ledger
    is printed, and each fire is shown started once."""
    with slow_backups(stack):
        name = stack.create(
            policy,  # the spec's name: {prefix}-{policy}
            backupCronString=cron,
            fromDate=soon(),
            overlapPolicy=policy,
            retentionMinutely="9",
        )
        yield name
        stop_firing(stack, name, policy)
    print(table(stack, name))
    assert_each_fire_started_once(stack, name)


def ledger(stack: Stack, name: str) -> list[Fire]:
    """The spec's fires from its first start on: a fire time that fell due before the tick's
    first pass saw the new spec (it may wait up to 4 s) is passed over as `misfire` by the
    grace rules, which are not what these tests are about."""
    fires = stack.fires(name)
    first = next((f.scheduled_at for f in fires if f.status == "STARTED"), None)
    return [f for f in fires if first is not None and f.scheduled_at >= first]


def soon() -> str:
    """A fromDate the tick sees coming (its longest wait is 4 s): no fire is due unseen."""
    return (datetime.now(UTC) + timedelta(seconds=6)).isoformat()


def runs(stack: Stack, name: str) -> list[dict[str, Any]]:
    """The spec's create_backup runs, oldest first."""
    return sorted(stack.creates(name), key=lambda w: (w["startTime"], w["workflowId"]))


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def table(stack: Stack, name: str) -> str:
    """The ledger as a table: each fire, what became of it, and its run."""
    by_id = {w["workflowId"]: w for w in stack.creates(name)}
    rows = stack.fires(name)
    if not rows:
        return "(no fires)"
    origin = ms(rows[0].scheduled_at)
    lines = [f"fires of {name} (t = s after the first fire time):"]
    for fire in rows:
        run = by_id.get(fire.workflow_id or "")
        began = f"{(run['startTime'] - origin) / 1000:6.1f}" if run else "     -"
        ended = (
            f"{(run['endTime'] - origin) / 1000:6.1f}" if run and run.get("endTime") else "     -"
        )
        kind = "manual" if fire.manual else "      "
        lines.append(
            f"  t={(ms(fire.scheduled_at) - origin) / 1000:5.1f} {kind}"
            f" {fire.status:8} {fire.skip_reason or '':9} run {fire.workflow_id or '-':36}"
            f" {run['status'] if run else '':10} start {began} end {ended}"
            f"  {fire.error or ''}"
        )
    return "\n".join(lines)


def settled(stack: Stack, name: str) -> bool:
    """No fire waiting or starting, no run open, no backup running or being removed (the
    retention of a minutely tier removes all but a minute's last backup)."""
    fires = stack.fires(name)
    pending = [f for f in fires if f.status == "PENDING"]
    running = [w for w in stack.creates(name) + stack.removes(name) if w["status"] == "RUNNING"]
    unrecorded = [f for f in fires if f.status == "STARTED" and f.outcome is None]
    moving = [b for b in stack.backups(name) if b["status"] in ("RUNNING", "REMOVING")]
    return not pending and not running and not unrecorded and not moving


def stop_firing(stack: Stack, name: str, policy: str) -> None:
    """Disable the spec (keeping its policy) and wait until everything of it has ended."""
    stack.update(name, enabled=0, overlapPolicy=policy)
    wait_until(lambda: settled(stack, name), timeout=TIMEOUT, what=f"{name} to settle")


def open_at(run: dict[str, Any], moment: datetime) -> bool:
    """Whether the run was open at `moment` (Conductor's times are whole milliseconds)."""
    at = ms(moment)
    return bool(run["startTime"] - 1 <= at <= (run.get("endTime") or at) + 1)


def overlapping(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["startTime"] < b["endTime"] and b["startTime"] < a["endTime"])


def assert_no_overlap(stack: Stack, name: str) -> None:
    listed = runs(stack, name)
    for before, after in itertools.pairwise(listed):
        assert after["startTime"] >= before["endTime"], "two create_backup ran at once\n" + table(
            stack, name
        )


def assert_nothing_orphaned(stack: Stack, name: str) -> None:
    """Every file the storage holds is a backup Backtor holds, and the other way round."""
    assert stack.live_data_ids(name) == stack.storage.files(), table(stack, name)


def test_skip_records_the_fires_behind_a_running_backup_as_skipped(stack: Stack) -> None:
    with fired_under(stack, "skip", "*/2 * * * * *") as name:
        wait_until(
            lambda: (
                [w for w in stack.creates(name) if w["status"] == "COMPLETED"]
                and len([f for f in ledger(stack, name) if f.status == "SKIPPED"]) >= 2
            ),
            timeout=TIMEOUT,
            what="a backup taken while fires were skipped",
        )
    shown = table(stack, name)
    assert stack.spec(name)["overlapPolicy"] == "skip"
    assert_no_overlap(stack, name)
    skipped = [f for f in ledger(stack, name) if f.status == "SKIPPED"]
    assert skipped and {f.skip_reason for f in skipped} == {"running"}, shown
    # A true reason: a run was open at each skipped fire time.
    assert all(any(open_at(w, f.scheduled_at) for w in runs(stack, name)) for f in skipped), shown
    assert_nothing_orphaned(stack, name)


def test_buffer_one_starts_one_waiting_fire_when_the_running_backup_ends(stack: Stack) -> None:
    with fired_under(stack, "bufferOne", "*/2 * * * * *") as name:
        wait_until(
            lambda: len(stack.creates(name)) >= 2,
            timeout=TIMEOUT,
            what="a second backup, started when the first ended",
        )
    shown = table(stack, name)
    assert stack.spec(name)["overlapPolicy"] == "bufferOne"
    assert_no_overlap(stack, name)
    fires = ledger(stack, name)
    assert not [f for f in fires if f.status == "PENDING"], shown
    by_id = {w["workflowId"]: w for w in runs(stack, name)}
    listed = runs(stack, name)
    # The buffered fires: each fell due while the run before it was open, waited, and started
    # soon after that run ended; its misfire grace did not apply while it waited.
    buffered = []
    for before, after in itertools.pairwise(listed):
        fire = next(f for f in fires if f.workflow_id == after["workflowId"])
        if open_at(before, fire.scheduled_at):
            buffered.append(fire)
            waited = (after["startTime"] - before["endTime"]) / 1000
            assert 0 <= waited <= BUFFER_START_BOUND, f"started {waited:.1f} s late\n{shown}"
    assert buffered, "no fire waited behind a running backup\n" + shown
    # The others were skipped: each fell due while a run was open and a fire already waited.
    skipped = [f for f in fires if f.status == "SKIPPED"]
    assert skipped and {f.skip_reason for f in skipped} == {"running"}, shown
    for fire in skipped:
        waiting = [
            f
            for f in fires
            if f.status == "STARTED"
            and f.scheduled_at < fire.scheduled_at
            and by_id[f.workflow_id or ""]["startTime"] > ms(fire.scheduled_at)
        ]
        assert waiting, f"fire at {fire.scheduled_at} skipped with the buffer free\n{shown}"
    assert_nothing_orphaned(stack, name)


def test_allow_starts_every_fire_beside_the_running_backups(stack: Stack) -> None:
    with fired_under(stack, "allow", "*/2 * * * * *") as name:
        wait_until(
            lambda: len([f for f in ledger(stack, name) if f.status == "STARTED"]) >= 3,
            timeout=TIMEOUT,
            what="three fires started",
        )
    shown = table(stack, name)
    assert stack.spec(name)["overlapPolicy"] == "allow"
    fires = ledger(stack, name)
    assert {f.status for f in fires} == {"STARTED"}, shown  # none skipped
    listed = runs(stack, name)
    assert {w["status"] for w in listed} == {"COMPLETED"}, shown
    assert any(overlapping(a, b) for a, b in itertools.pairwise(listed)), shown
    taken = [b for b in stack.backups(name) if b["dataId"]]
    assert len(taken) == len(listed), shown
    assert_nothing_orphaned(stack, name)


def test_terminate_other_terminates_the_running_backup_then_starts(stack: Stack) -> None:
    # The spec disabled at the block's end, the last backup runs to its end.
    with fired_under(stack, "terminateOther", "*/3 * * * * *") as name:
        wait_until(
            lambda: len([w for w in stack.creates(name) if w["status"] == "TERMINATED"]) >= 2,
            timeout=TIMEOUT,
            what="two backups terminated by later fires",
        )
    shown = table(stack, name)
    assert stack.spec(name)["overlapPolicy"] == "terminateOther"
    fires = ledger(stack, name)
    assert {f.status for f in fires} == {"STARTED"}, shown  # none skipped
    listed = runs(stack, name)
    assert listed[-1]["status"] == "COMPLETED", shown
    terminated = [w for w in listed if w["status"] == "TERMINATED"]
    assert len(terminated) >= 2, shown
    fire_ids = {f.id: f for f in fires}
    records = {b["createWorkflowId"]: b for b in stack.backups(name)}
    for run in terminated:
        reason = run.get("reasonForIncompletion") or ""
        match = TERMINATED.fullmatch(reason)
        assert match, f"{run['workflowId']}: {reason!r}\n{shown}"
        # ... named after the fire that took its place, which started right after.
        successor = fire_ids[int(match["fire"])]
        assert successor.status == "STARTED" and successor.workflow_id != run["workflowId"]
        mine = next(f for f in fires if f.workflow_id == run["workflowId"])
        assert (mine.outcome, mine.error) == ("TERMINATED", reason), shown
        # GET …/materialized shows the terminated backup and why.
        record = records[run["workflowId"]]
        assert record["status"] == "FAILED" and record["dataId"] is None, record
        assert reason in (record["lastError"] or ""), record
    completed = records[listed[-1]["workflowId"]]
    assert completed["status"] == "COMPLETED" and completed["dataId"], completed
    # No file of a terminated run is kept; the one completed backup is the one file.
    assert set(stack.storage.cancelled) <= {w["workflowId"] for w in terminated}
    assert_nothing_orphaned(stack, name)


def taken(answer: requests.Response) -> tuple[requests.Response] | None:
    """The answer, unless it is the 409 a trigger gets while a pass starts a fire of its spec."""
    being_started = answer.status_code == 409 and "is being started" in answer.text
    return None if being_started else (answer,)


def test_a_manual_trigger_follows_the_policy_unless_overlap_overrides_it(stack: Stack) -> None:
    with slow_backups(stack):
        name = stack.create("manual", backupCronString="0 0 0 1 1 ?", retentionMinutely="9")
        trigger = f"{stack.api}/backup/{name}/materialized"
        first = requests.post(trigger, timeout=10)
        assert first.status_code == 202, first.text
        first_run = first.json()["workflowId"]

        refused = requests.post(trigger, timeout=10)  # the spec's policy: skip
        unknown = requests.post(trigger, params={"overlap": "replace"}, timeout=10)
        waiting = requests.post(trigger, params={"overlap": "bufferOne"}, timeout=10)

        assert refused.status_code == 409, refused.text
        assert unknown.status_code == 422 and unknown.json()["field"] == "overlap", unknown.text
        assert waiting.status_code == 202, waiting.text
        assert waiting.json() == {"name": name, "workflowId": None, "buffered": True}
        second_run = wait_until(
            lambda: [w["workflowId"] for w in stack.creates(name) if w["workflowId"] != first_run],
            timeout=TIMEOUT,
            what="the buffered backup to start",
        )[0]
        ended = next(w for w in stack.creates(name) if w["workflowId"] == first_run)
        assert ended["status"] == "COMPLETED"

        # The pass that started the buffered fire may not have recorded its start yet: the
        # API then answers 409 "being started; try again" and stores nothing (CI, loaded).
        (replacing,) = wait_until(
            lambda: taken(requests.post(trigger, params={"overlap": "terminateOther"}, timeout=10)),
            timeout=TIMEOUT,
            interval=0.1,
            what="the trigger not to find the buffered fire's start under way",
        )
        assert replacing.status_code == 202, replacing.text
        assert replacing.json()["terminated"] == [second_run]
        wait_until(lambda: settled(stack, name), timeout=TIMEOUT, what=f"{name} to settle")
    shown = table(stack, name)
    print(shown)
    fires = ledger(stack, name)
    assert [(f.manual, f.status, f.skip_reason) for f in fires] == [
        (True, "STARTED", None),
        (True, "SKIPPED", "running"),
        (True, "STARTED", None),  # buffered, then started when the first ended
        (True, "STARTED", None),
    ], shown
    statuses = {w["workflowId"]: w["status"] for w in stack.creates(name)}
    assert statuses[first_run] == "COMPLETED" and statuses[second_run] == "TERMINATED", shown
    record = next(b for b in stack.backups(name) if b["createWorkflowId"] == second_run)
    assert "for the manual backup requested at" in record["lastError"], record
    assert_nothing_orphaned(stack, name)
