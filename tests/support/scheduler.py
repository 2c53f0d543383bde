"""Watching the scheduler from outside: its row in the database and its tick in Conductor.

`SchedulerWatch` reads `scheduler_state` (who ran the last pass, the heartbeat, the leases)
and the tick workflow's `evaluate_schedule` task. Conductor shows that task IN_PROGRESS with
`callbackAfterSeconds` 0 while a worker holds it (polled, passes running) and SCHEDULED with
a callback once the worker has handed it back; each poll adds one to `pollCount`. So a
"hold" is one poll: one or more whole passes, all run after the poll and ended by the
hand-back. Tests use holds to prove that something did NOT happen during N real passes,
instead of sleeping for a guessed while.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from backtor.conductor.names import EVALUATE_SCHEDULE, TICK, TICK_CORRELATION_ID
from backtor.db.models import SCHEDULER_STATE_ID, SchedulerState
from tests.support.conductor import workflow, workflows
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class State:
    tick_workflow_id: str | None
    last_tick_at: datetime | None
    lease_holder: str | None
    lease_until: datetime | None
    pass_holder: str | None
    pass_until: datetime | None

    @property
    def pass_holder_pid(self) -> int | None:
        """The pid in `hostname:pid:nonce` of the process that ran the last pass."""
        if not self.pass_holder:
            return None
        try:
            return int(self.pass_holder.split(":")[-2])
        except (IndexError, ValueError):
            return None


@dataclass(frozen=True)
class Hold:
    """The tick's evaluate_schedule task as Conductor shows it at one moment."""

    workflow_id: str
    poll_count: int
    held: bool  # polled by a worker and not handed back yet
    updated_ms: int  # Conductor's updateTime: the poll, or the hand-back
    worker_id: str | None  # the worker id of the last poller

    def after(self, other: Hold) -> bool:
        """A later poll than `other` (of the same tick, or of a replacement tick)."""
        if self.workflow_id != other.workflow_id:
            return self.poll_count >= 1
        return self.poll_count > other.poll_count


class SchedulerWatch:
    def __init__(self, database_url: str, conductor_url: str) -> None:
        self.engine = create_engine(database_url, poolclass=NullPool)
        self.conductor = conductor_url

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SchedulerWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self) -> State:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(
                    SchedulerState.tick_workflow_id,
                    SchedulerState.last_tick_at,
                    SchedulerState.lease_holder,
                    SchedulerState.lease_until,
                    SchedulerState.pass_holder,
                    SchedulerState.pass_until,
                ).where(SchedulerState.id == SCHEDULER_STATE_ID)
            ).one()
        return State(*row)

    def running_ticks(self) -> list[dict[str, object]]:
        found = workflows(self.conductor, TICK, TICK_CORRELATION_ID, include_closed=False)
        return sorted(
            (w for w in found if w["status"] == "RUNNING"), key=lambda w: int(w["startTime"])
        )

    def hold(self) -> Hold | None:
        """The evaluate_schedule task of the (oldest) running tick; None when none runs."""
        ticks = self.running_ticks()
        if not ticks:
            return None
        run = workflow(self.conductor, str(ticks[0]["workflowId"]))
        tasks = [t for t in run.get("tasks", []) if t.get("taskType") == EVALUATE_SCHEDULE]
        if not tasks:
            return None
        task = tasks[-1]
        return Hold(
            workflow_id=str(run["workflowId"]),
            poll_count=int(task.get("pollCount") or 0),
            held=task.get("status") == "IN_PROGRESS" and not task.get("callbackAfterSeconds"),
            updated_ms=int(task.get("updateTime") or 0),
            worker_id=task.get("workerId"),
        )

    def wait_for_holds(self, count: int, *, timeout: float) -> None:
        """Return once the tick has been polled and handed back `count` times from now on.

        Each such hold is at least one whole scheduler pass that began after this call.
        """
        first = wait_until(self.hold, timeout=timeout, what="a running tick")
        assert first is not None
        mark = first
        for n in range(count):

            def handed_back(since: Hold = mark) -> Hold | None:
                now = self.hold()
                return now if now is not None and now.after(since) and not now.held else None

            later = wait_until(
                handed_back, timeout=timeout, interval=0.1, what=f"scheduler hold {n + 1}/{count}"
            )
            assert later is not None
            mark = later
