"""Tick shards end to end (docs/scheduling.md, "Shards"): workers move from one tick to three
while specs fire every second; no fire starts twice, none goes missing, backups go on."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from backtor.conductor.names import TICK, tick_correlation_id
from backtor.db.models import Fire
from tests.e2e.conftest import Stack, assert_each_fire_started_once
from tests.support import processes
from tests.support.conductor import workflows
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SPECS = 6


def running_ticks(stack: Stack, shards: int) -> dict[int, list[dict[str, Any]]]:
    return {
        shard: [
            w
            for w in workflows(stack.conductor, TICK, tick_correlation_id(shard))
            if w["status"] == "RUNNING"
        ]
        for shard in range(shards)
    }


def started_after(stack: Stack, name: str, moment: datetime) -> list[Fire]:
    return [f for f in stack.fires(name) if f.status == "STARTED" and f.scheduled_at > moment]


def test_moving_from_one_tick_shard_to_three_fires_each_second_once(stack: Stack) -> None:
    names = [stack.create(f"shard{i}", backupCronString="* * * * * *") for i in range(SPECS)]
    begun = datetime.now(UTC)
    with processes.workers(stack.env, stack.logs, count=2) as old_workers:
        wait_until(
            lambda: all(len(started_after(stack, n, begun)) >= 3 for n in names),
            timeout=90,
            what="three backups of each spec under one tick",
        )
        ticks = running_ticks(stack, 3)
        assert len(ticks[0]) == 1 and not ticks[1] and not ticks[2]
        # The restart: the new workers (K = 3) start beside the old ones, which then stop,
        # as a rolling deployment does.
        sharded = {**stack.env, "BACKTOR_TICK_SHARDS": "3"}
        new_dir = stack.logs / "sharded"
        new_dir.mkdir()
        with processes.workers(sharded, new_dir, count=2):
            time.sleep(5)  # the new replicas come up beside the old ones for a moment
            changed_at = datetime.now(UTC)
            for old in old_workers:
                processes.stop(old)
            wait_until(
                lambda: all(len(runs) == 1 for runs in running_ticks(stack, 3).values()),
                timeout=60,
                what="three tick workflows, one per shard",
            )
            wait_until(
                lambda: all(len(started_after(stack, n, changed_at)) >= 5 for n in names),
                timeout=90,
                what="five backups of each spec after the change",
            )
            ticks = running_ticks(stack, 3)
            assert [len(runs) for runs in ticks.values()] == [1, 1, 1]
            assert [runs[0]["input"].get("shard") for runs in ticks.values()][1:] == [1, 2]
            for name in names:
                stack.update(name, enabled=0)
            wait_until(
                lambda: (
                    not [w for n in names for w in stack.creates(n) if w["status"] == "RUNNING"]
                ),
                timeout=60,
                what="the specs' runs to end",
            )
    for name in names:
        assert_each_fire_started_once(stack, name)
        ledger = stack.fires(name)
        # Nothing vanished: every second from the first fire time to the last is in the
        # ledger, STARTED or SKIPPED with its reason.
        times = sorted(f.scheduled_at for f in ledger)
        assert len(times) == len(set(times))
        assert len(times) == int((times[-1] - times[0]).total_seconds()) + 1, name
        assert all(f.status in ("STARTED", "SKIPPED") for f in ledger)
        assert all(f.skip_reason for f in ledger if f.status == "SKIPPED")
        # Backups kept being taken after the change: runs of fires due after it completed.
        completed = {w["workflowId"] for w in stack.creates(name) if w["status"] == "COMPLETED"}
        assert [f for f in started_after(stack, name, changed_at) if f.workflow_id in completed]
