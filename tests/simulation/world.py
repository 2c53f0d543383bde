"""The simulated world: one clock, one SQLite database, the Conductor twin, and the actors.

Time is discrete: an agenda of (moment, order, actor) where each actor is a generator that
yields the moment it wants to run again. The tick hands scheduler passes to replicas (and
now and then to two at once), a storage worker and Backtor workers poll the twin's queues,
API clients change specs, chaos cuts Conductor off, Conductor's sweeper times abandoned
tasks out. Backtor code runs either inline or, in interleaved scenarios, in a fiber that
pauses at each Conductor call and each transaction, so passes of two replicas, a retention
run and API requests overlap as they would in production. Nothing sleeps.

With the knob `watchdog` the tick is Backtor's own: each replica runs the watchdog
(ensure_tick, every WATCHDOG_SECONDS, crashing too), which starts the backtor_scheduler
workflow; Conductor hands its evaluate_schedule task to one replica at a time, which runs
schedule_passes (the worker's handler, sleeping in simulated time) and answers IN_PROGRESS
with a callback. Operators restart or terminate ticks by hand. Without it, the tick is
handed to replicas directly and failover is modelled (FAILOVER_MS).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import traceback
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from sqlalchemy import bindparam, create_engine, event, exists, func, insert, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

import backtor.conductor.twin as twin_module
import backtor.scheduling.fires as fires_module
import backtor.scheduling.removals as removals_module
import backtor.workers.tasks as tasks_module
from backtor.conductor.names import (
    APPLY_RETENTION,
    BACKUP,
    EVALUATE_SCHEDULE,
    RECORD_REMOVAL,
    REMOVE,
    RESTORE,
    TICK,
    TICK_CORRELATION_ID,
    VERIFY,
)
from backtor.conductor.payloads import TaskRun, TaskStatus, WorkflowRun, WorkflowStatus
from backtor.conductor.port import Conductor
from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.conductor.results import TaskOutcome
from backtor.conductor.twin import ConductorTwin, FaultKind, Faults
from backtor.core.errors import BacktorError, ConductorRefused, ConductorUnavailable
from backtor.core.schedule import OverlapPolicy, jitter_offset
from backtor.core.specs import SpecDraft
from backtor.db.models import (
    SCHEDULER_STATE_ID,
    Backup,
    BackupSpec,
    BackupStatus,
    Base,
    Fire,
    FireStatus,
    SchedulerState,
)
from backtor.db.types import UTCDateTime
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings
from backtor.scheduling import restores
from backtor.scheduling.handlers import record_backup, record_removed_backup
from backtor.scheduling.recording import plan_for
from backtor.scheduling.tick import PASS_BUDGET, TickReport, run_tick
from backtor.scheduling.watchdog import LEASE, ensure_tick
from backtor.workers.runner import WATCHDOG_SECONDS
from backtor.workers.tasks import MAX_CALLBACK_SECONDS, schedule_passes, shard_of
from tests.simulation import api
from tests.simulation.fibers import Acting, Crash, Fiber, FiberPool, acting, set_acting
from tests.simulation.pauses import PauseModel
from tests.simulation.scenario import API_ACTIONS, JITTER_CHOICES, OVERLAP_CHOICES, Scenario

T = TypeVar("T")
Actor = Generator[int, None, None]
CONDUCTOR_ERRORS = (ConductorUnavailable, ConductorRefused)
STORAGE = "storage"
STORAGE_TASK_TYPES = (BACKUP, REMOVE, VERIFY, RESTORE)
OWN_TASK_TYPES = (APPLY_RETENTION, RECORD_REMOVAL)
# A sweep this far off never comes within a scenario (settling ends far sooner).
NEVER_SWEPT_MS = 10 * 24 * 3_600_000
# Crash points are drawn among the first this many step boundaries of an action.
CRASH_SPAN = 24
SETTLE_STEPS = 600
SETTLE_HORIZON = timedelta(hours=8)
SETTLE_ROUNDS = 4
# A pass still running this long after the tick was handed out has lost the tick: the
# tick task's response timeout (10 s) and the watchdog's stall rule (10 s, checked every 2 s).
FAILOVER_MS = 12_000
# The settle loop's longest step while nothing changes, at first (a tick's longest callback)
# and at most (eight times longer at each idle step).
SETTLE_IDLE = timedelta(seconds=15)
SETTLE_IDLE_MAX = timedelta(hours=1)
# Scenarios with the knob `watchdog`: every replica runs the watchdog this often, and
# Conductor hands evaluate_schedule out within this much of its callback (the poll interval).
WATCHDOG_MS = int(WATCHDOG_SECONDS * 1000)
TICK_POLL_MS = 100
# The delivery looks at the tick's queue at least this often (a tick the watchdog started).
TICK_LOOK_MS = 500
# A latency this long is a stop-the-world pause of the process (replica_stall).
GC_PAUSE_MS = 20_000


class SimClock:
    """Simulated time in whole milliseconds since the scenario's start."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.now_ms = 0
        self._now = start

    def __call__(self) -> datetime:
        return self._now

    def set(self, ms: int) -> None:
        if ms > self.now_ms:
            self.now_ms = ms
            self._now = self.start + timedelta(milliseconds=ms)


class Database:
    """One in-memory SQLite database per process, emptied between scenarios.

    The schema is made once (create_all plus the scheduler_state row migration 0002
    inserts); rows are deleted between scenarios, so ids restart at 1 and a seed replays
    the same in a fresh process. One connection (StaticPool) serves every session: the
    fibers never pause inside a write transaction, so sessions never mix writes.
    """

    def __init__(self) -> None:
        self.engine: Engine = create_engine(
            "sqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            hide_parameters=True,
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        # Set by any statement that writes a spec or a backup row (rolled back or not): what
        # World.committed observes, which a commit that wrote neither cannot have changed.
        self.specs_written = True
        self.maker = sessionmaker(bind=self.engine, expire_on_commit=False)
        # The API's sessions (each commit a step boundary); made once: each sessionmaker
        # makes a Session subclass, and event dispatch pays for every new one.
        self.request_maker = sessionmaker(
            bind=self.engine, class_=SteppedSession, expire_on_commit=False
        )
        with self.engine.connect() as connection:
            self._raw: Any = connection.connection.driver_connection
        # SQLite's own trace hook, not an engine event: with no engine event listened to,
        # SQLAlchemy skips its event dispatch around every statement.
        self._raw.set_trace_callback(self._note_write)
        self._tables = list(reversed(Base.metadata.sorted_tables))

    def _note_write(self, statement: str) -> None:
        if statement.startswith(_SPEC_OR_BACKUP_WRITES):
            self.specs_written = True

    def reset(self) -> None:
        self.specs_written = True
        with self.engine.begin() as connection:
            for table in self._tables:
                connection.execute(table.delete())
            connection.execute(insert(SchedulerState).values(id=1))

    def read(self) -> Connection:
        """A connection for the harness's own reads (Core statements only): an ORM session
        costs several times more to set up and tear down, and the harness reads after
        every API request and at every settle step."""
        return self.engine.connect()

    def in_write(self) -> bool:
        """True while some session holds uncommitted writes on the shared connection."""
        return bool(self._raw.in_transaction)


_SPEC_OR_BACKUP_WRITES = (
    "INSERT INTO backup ",
    "INSERT INTO backup_spec ",
    "UPDATE backup ",
    "UPDATE backup_spec ",
    "DELETE FROM backup ",
    "DELETE FROM backup_spec ",
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


class SerialExecutor:
    """Stands in for ThreadPoolExecutor in the scheduling modules: starts run in call order.

    Real threads would draw faults and create workflows in a racy order, and would run
    outside the fiber that owns the step boundaries.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        del max_workers

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[..., T], *iterables: Any) -> list[T]:
        return [fn(*args) for args in zip(*iterables, strict=True)]

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Runs `fn` now. An Exception waits in the future, as a pool thread's would; a
        Crash (the process dying) goes up at once."""
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:
            future.set_exception(error)
        return future


@contextmanager
def _patched(module: object, name: str, value: object) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


@contextmanager
def deterministic() -> Iterator[None]:
    """Serial starts and counted workflow ids while a scenario runs (restored after).

    Set by name: the scheduling modules and the twin have no hook for either (yet).
    """
    counter = itertools.count(1)
    ids = SimpleNamespace(uuid4=lambda: uuid.UUID(int=next(counter)))
    patches: list[tuple[object, str, object]] = [
        (fires_module, "ThreadPoolExecutor", SerialExecutor),
        (removals_module, "ThreadPoolExecutor", SerialExecutor),
        (twin_module, "uuid", ids),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@dataclass
class Segment:
    """A stretch of a spec's life with one schedule; `active` = enabled and not purging."""

    start: datetime
    cron: str
    timezone: str
    from_date: datetime | None
    to_date: datetime | None
    active: bool
    offset: timedelta = timedelta(0)  # jitterSeconds' offset for this spec


@dataclass
class SpecLife:
    """A spec's schedules over time, as observed in its row after each API request."""

    name: str
    segments: list[Segment] = field(default_factory=list)
    deleted_at: datetime | None = None
    purge_requested_at: datetime | None = None
    seen: tuple[object, ...] = ()


@dataclass
class PassRecord:
    """A scheduler pass a replica began for the tick (knob `watchdog`); `ran`: it held the
    pass lease (None: it died first)."""

    at_ms: int
    holder: str
    ran: bool | None = None
    end_ms: int | None = None


@dataclass
class StorageJob:
    task: TaskRun
    plan: str  # complete | fail | terminal | hang
    done: bool = False
    outcome: TaskOutcome | None = None


class SteppedSession(Session):
    """A request's session: each explicit commit is a step boundary (crash before or after)."""

    def commit(self) -> None:
        world: World = self.info["world"]
        world.boundary("db.commit", pause=False)  # a crash here rolls back
        super().commit()
        world.committed()
        world.boundary("db.commit", after=True)  # a crash here keeps the commit


class SteppedDb:
    """A process's sessionmaker: each transaction is a step boundary (pause, crash)."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._maker = world.db.maker
        self._requests = world.db.request_maker

    def __call__(self, **kwargs: Any) -> Session:
        session = self._requests(info={"world": self._world}, **kwargs)
        act = acting()
        if act is not None:
            act.sessions.append(session)
        return session

    @contextmanager
    def begin(self) -> Iterator[Session]:
        self._world.boundary("db.begin")
        act = acting()
        if act is not None:
            act.depth += 1
        try:
            with self._maker.begin() as session:
                yield session
                self._world.boundary("db.commit", pause=False)  # a crash here rolls back
        finally:
            if act is not None:
                act.depth -= 1
        self._world.committed()
        self._world.boundary("db.commit", after=True)  # a crash here keeps the commit


# Conductor calls that change something: each goes into the trace.
_TRACED = frozenset({"start_workflow", "terminate_workflow", "update_task", "retry_workflow"})


def _who() -> str:
    act = acting()
    return act.name if act is not None else "harness"


class SteppedConductor:
    """The twin as one process sees it: each call is a step boundary before and after."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._twin = world.twin

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._twin, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self._world.boundary(f"conductor.{name}")
            try:
                result = target(*args, **kwargs)
            except CONDUCTOR_ERRORS as error:
                if name in _TRACED:
                    self._world.note(_who(), f"{name} {args[:1]} failed: {error}")
                raise
            if name in _TRACED:
                self._world.note(_who(), f"{name} {args[:1]} -> {result}")
            self._world.boundary(f"conductor.{name}", after=True)
            return result

        return call


class World:
    """One scenario's world; `run()` plays it, then settles it for the invariants."""

    def __init__(self, scenario: Scenario, db: Database, pool: FiberPool) -> None:
        self.scenario = scenario
        self._streams: dict[str, random.Random] = {}
        self.clock = SimClock(scenario.start)
        self.db = db
        self.pool = pool
        self.twin = ConductorTwin(clock=self.clock, seed=scenario.seed)
        register_definitions(self.twin)
        self.settings = Settings(
            conductor_api_url="http://twin.invalid/api",
            database_url="sqlite://",
            data_dir=Path("/nonexistent"),
            log_level="WARNING",
            log_format="text",
            api_token=None,
            max_removals_per_run=scenario.max_removals,
            removal_retry_seconds=scenario.removal_retry_seconds,
        )
        self.interleave = scenario.interleave
        self.crashes_on = scenario.crash_rate > 0
        self.settling = False
        self.agenda: list[tuple[int, int, Actor]] = []
        self._until_ms = -1  # run_agenda's horizon while it runs
        self._depth = 0  # actors being stepped, one inside another (start_pass)
        self._order = itertools.count()
        self.in_flight: set[Fiber] = set()
        self.trace: list[tuple[int, str, str]] = []
        self.failures: list[str] = []
        self.stats: dict[str, int] = {}
        self.lives: dict[str, SpecLife] = {}
        self.storage: dict[str, str] = {}  # dataId -> spec name, for data that exists
        self.data_counter = itertools.count(1)
        self.storage_jobs: dict[str, StorageJob] = {}
        self.held: set[str] = set()  # task ids a live worker holds
        self.unreported: dict[str, tuple[TaskRun, TaskOutcome]] = {}
        self.sweep_extra: dict[str, int] = {}
        self.outages = 0
        self.end: datetime | None = None  # when the schedules were stopped (settle)
        self.drafts = {setup.draft.name: setup.draft for setup in scenario.specs}
        self.replica_busy: set[str] = set()
        # Backup statuses before the last settle round: what its retention runs marked.
        self.round_before: dict[int, str] = {}
        self.passes: list[PassRecord] = []  # knob `watchdog`: the tick's passes
        self.disruptions: list[tuple[int, int, str]] = []  # knob `watchdog`: see disrupt()
        # knob `watchdog`, at the settle's start: (the tick a clean watchdog run kept, the
        # running ticks, the tick scheduler_state names)
        self.tick_check: tuple[str | None, list[str], str | None] | None = None
        # Knob autoPauseAfterFailures (a spec with it > 0): every commit is followed (the
        # spec's schedule changes without an API request when it pauses itself) and its
        # consecutive failures are counted from the records, as the invariant expects them.
        self.follow_commits = any(
            (setup.draft.auto_pause_after_failures or 0) > 0 for setup in scenario.specs
        )
        self.pause_model = PauseModel()

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.clock.now_ms

    def note(self, who: str, what: str) -> None:
        self.trace.append((self.clock.now_ms, who, what))

    def committed(self) -> None:
        """After every commit of Backtor code (knob autoPauseAfterFailures): a spec may have
        paused itself; note its schedule, and check its count against the records."""
        if self.follow_commits and self.db.specs_written:
            self.db.specs_written = False
            self.observe_specs()
            self.pause_model.observe(self)

    def disrupt(self, what: str, until_ms: int | None = None) -> None:
        """Something that stops the tick, from now until `until_ms` (knob `watchdog`): the
        liveness check counts from the end of the last of them."""
        if self.scenario.watchdog and not self.settling:
            now = self.clock.now_ms
            self.disruptions.append((now, now if until_ms is None else until_ms, what))

    def count(self, key: str, by: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + by

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.note("harness", f"FAILURE {message}")

    def services(self, name: str) -> Services:
        del name
        return Services(
            settings=self.settings,
            engine=self.db.engine,
            db=cast(sessionmaker[Session], SteppedDb(self)),
            conductor=cast(Conductor, SteppedConductor(self)),
            clock=self.clock,
        )

    def spawn(self, actor: Actor, at_ms: int) -> None:
        heapq.heappush(self.agenda, (at_ms, next(self._order), actor))

    def rng(self, stream: str) -> random.Random:
        """One generator per concern, so that turning one off (say crashes, while
        minimising a failure) leaves every other draw of the run as it was."""
        found = self._streams.get(stream)
        if found is None:
            found = self._streams[stream] = random.Random(f"{self.scenario.seed}:{stream}")
        return found

    def later(self, stream: str, low: int, high: int) -> int:
        return self.clock.now_ms + self.rng(stream).randrange(low, high)

    def boundary(self, kind: str, *, after: bool = False, pause: bool = True) -> None:
        """A step boundary of the acting process: maybe it dies here, maybe it is overtaken.

        Only boundaries outside a transaction pause: the fibers share one connection.
        """
        act = acting()
        if act is None:
            return
        act.steps += 1
        if act.crash_at == act.steps and self.crashes_on:
            act.crashed_at = f"{'after' if after else 'before'} {kind}"
            raise Crash(f"{act.name} crashed {act.crashed_at}")
        if after or not pause:
            return
        if act.in_transaction() or self.db.in_write():
            # On PostgreSQL a lock held across a Conductor call; on SQLite (BEGIN IMMEDIATE)
            # the database's write lock, or a second transaction waiting on the first.
            self.fail(f"{act.name}: {kind} while a transaction of its own is open")
            return
        if act.fiber is not None and self.interleave:
            latency = self._latency()
            if latency >= GC_PAUSE_MS and act.name.startswith("replica-"):
                self.disrupt(f"{act.name} paused for {latency} ms", self.clock.now_ms + latency)
            self.pause(act.fiber, self.clock.now_ms + latency)

    def _latency(self) -> int:
        rng = self.rng("latency")
        roll = rng.random()
        if roll < self.scenario.replica_stall * 0.2:
            return rng.randrange(GC_PAUSE_MS, 60_000)  # a stop-the-world pause mid-action
        if roll < 0.1:
            return rng.randrange(300, 3_000)
        return rng.randrange(0, 120)

    def crash_plan(self) -> int | None:
        rng = self.rng("crash")
        if self.crashes_on and rng.random() < self.scenario.crash_rate:
            return rng.randrange(1, CRASH_SPAN + 1)
        return None

    def call(
        self, name: str, fn: Callable[[], T], crash_at: int | None = None, *, sleeps: bool = False
    ) -> Generator[int, None, T]:
        """Run Backtor code as process `name`: inline, or in a fiber the agenda interleaves.

        `sleeps`: in a fiber even without interleaving, for code that sleeps (the tick's
        handler); it then pauses only where it sleeps.
        """
        act = Acting(name, crash_at if self.crashes_on else None)
        if not self.interleave and not sleeps:
            set_acting(act)
            try:
                return fn()
            finally:
                set_acting(None)
        fiber = self.pool.take()
        act.fiber = fiber

        def job() -> T:
            set_acting(act)
            return fn()

        fiber.start(job)
        self.in_flight.add(fiber)
        try:
            while True:
                fiber.resume()
                if fiber.done:
                    break
                yield fiber.wake_ms
        finally:
            if not fiber.done:
                fiber.stop()
            self.in_flight.discard(fiber)
            self.pool.give_back(fiber)
        if fiber.error is not None:
            raise fiber.error
        return cast(T, fiber.result)

    def unexpected(self, who: str, error: BaseException) -> None:
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        where = "".join(lines[-6:]).strip().replace("\n", " | ")
        self.fail(f"unexpected exception in {who}: {type(error).__name__}: {error} [{where}]")

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> None:
        scenario = self.scenario
        for setup in scenario.specs:
            self.spawn(self.create_actor(setup.draft), setup.created_ms)
        if scenario.watchdog:
            self.spawn(self.tick_delivery_actor(), 0)
            for name in self.replica_names():
                self.spawn(self.watchdog_actor(name), self.later("watchdog", 0, WATCHDOG_MS))
            if scenario.duplicate_gap_ms:
                gap = scenario.duplicate_gap_ms
                self.spawn(self.operator_tick_actor(), self.later("duplicates", 0, gap))
            for at_ms, shards in scenario.shard_changes:
                self.spawn(self.shards_actor(shards), at_ms)
        else:
            self.spawn(self.tick_actor(), self.later("tick", 0, 2_000))
            if scenario.duplicate_gap_ms:
                gap = scenario.duplicate_gap_ms
                self.spawn(self.duplicate_actor(), self.later("tick", 0, gap))
        self.spawn(self.storage_actor(), self.later("storage", 0, 1_000))
        for index in range(scenario.backtor_workers):
            self.spawn(self.backtor_actor(f"worker-{index}"), self.later("workers", 0, 1_000))
        self.spawn(self.sweeper_actor(), 5_000)
        for client in range(scenario.api_clients):
            name = f"api-{client}"
            self.spawn(self.api_actor(name), self.later(name, 0, scenario.api_gap_ms))
        for start, length in scenario.outages:
            self.spawn(self.outage_actor(length), start)
        if scenario.purge_at_ms is not None:
            self.spawn(self.purge_actor(), scenario.purge_at_ms)
        self.set_fault_rates(scenario.fault_rate)
        with self.recording_passes(), _patched(fires_module, "START_CHUNK", scenario.start_chunk):
            self.run_agenda(scenario.horizon_ms)
            self.settle()

    @contextmanager
    def recording_passes(self) -> Iterator[None]:
        """The tick's handler calls run_tick through recorded_run_tick (knob `watchdog`)."""
        if not self.scenario.watchdog:
            yield
            return
        name = "run_tick"  # set by name, as deterministic() does: tasks.py has no hook
        saved = getattr(tasks_module, name)
        setattr(tasks_module, name, self.recorded_run_tick)
        try:
            yield
        finally:
            setattr(tasks_module, name, saved)

    def run_agenda(self, until_ms: int, stop: Callable[[], bool] | None = None) -> None:
        self._until_ms = until_ms
        try:
            while self.agenda and self.agenda[0][0] <= until_ms:
                if stop is not None and stop():
                    return
                at, _, actor = heapq.heappop(self.agenda)
                self.clock.set(at)
                self.step(actor)
        finally:
            self._until_ms = -1

    def step(self, actor: Actor) -> None:
        """Run `actor` up to its next yield and put it back on the agenda."""
        self._depth += 1
        try:
            wake = next(actor)
        except StopIteration:
            return
        finally:
            self._depth -= 1
        self.spawn(actor, max(wake, self.clock.now_ms))

    def pause(self, fiber: Fiber, wake_ms: int) -> None:
        """The acting fiber waits until `wake_ms`, as a step the agenda interleaves.

        When run_agenda itself resumed it (not an actor that started it), and nothing else on
        the agenda comes before `wake_ms`, the agenda would hand it straight back: the clock
        moves on and the fiber carries on, with no switch of threads. Same events, same
        order; a switch costs a thread wake-up, slow on a loaded machine.
        """
        if (
            self._depth == 1
            and wake_ms <= self._until_ms
            and (not self.agenda or self.agenda[0][0] > wake_ms)
        ):
            self.clock.set(wake_ms)
            return
        fiber.pause(wake_ms)

    def set_fault_rates(self, rate: float) -> None:
        kinds = self.scenario.fault_kinds
        for kind in kinds:
            self.twin.faults.set_rate(None, kind, rate / len(kinds))
        if self.outages > 0:
            self.twin.faults.set_rate(None, FaultKind.UNAVAILABLE, 1.0)

    @contextmanager
    def no_faults(self) -> Iterator[None]:
        """Conductor's own doings (its sweeper) and the settle phase are not faulted."""
        saved = self.twin.faults
        self.twin.faults = Faults()
        try:
            yield
        finally:
            self.twin.faults = saved

    # -- API actions ----------------------------------------------------------------------------

    def observe_specs(self) -> None:
        """Note each spec's schedule as stored: a new stretch starts at each write of it."""
        with self.db.read() as connection:
            rows = connection.execute(_SPEC_SCHEDULES).all()
        present = set()
        for spec in rows:
            present.add(spec.name)
            life = self.lives.setdefault(spec.name, SpecLife(spec.name))
            seen = (
                spec.last_update,
                spec.cron_string,
                spec.timezone,
                spec.from_date,
                spec.to_date,
                spec.enabled,
                spec.deleting,
                spec.jitter_seconds,
            )
            if seen != life.seen:
                life.seen = seen
                life.segments.append(
                    Segment(
                        start=spec.last_update,
                        cron=spec.cron_string,
                        timezone=spec.timezone,
                        from_date=spec.from_date,
                        to_date=spec.to_date,
                        active=spec.enabled and not spec.deleting,
                        offset=jitter_offset(spec.name, spec.jitter_seconds),
                    )
                )
            if spec.deleting and life.purge_requested_at is None:
                life.purge_requested_at = spec.last_update
        for name, life in self.lives.items():
            if name not in present and life.deleted_at is None:
                life.deleted_at = self.clock()

    def api_call(self, client: str, what: str, fn: Callable[[], str]) -> Generator[int, None, None]:
        """One request: its answer or error goes to the trace; a crash is the API dying."""
        try:
            answer = yield from self.call(client, fn, self.crash_plan())
            self.note(client, f"{what} -> {answer}")
            self.count(f"api.{what.split()[0]}")
        except Crash as crash:
            self.note(client, f"{what} -> crashed: {crash}")
            self.count("crash.api")
        except BacktorError as error:  # the routes' 4xx/5xx answers
            self.note(client, f"{what} -> {type(error).__name__}: {error}")
        except Exception as error:
            self.unexpected(f"{client} {what}", error)
        finally:
            self.observe_specs()

    def create_actor(self, draft: SpecDraft) -> Actor:
        fn = partial(api.create, self.services("api-create"), draft)
        yield from self.api_call("api-create", f"create {draft.name}", fn)

    def live_names(self) -> list[str]:
        return [
            name
            for name, life in self.lives.items()
            if life.deleted_at is None and life.purge_requested_at is None
        ]

    def api_actor(self, client: str) -> Actor:
        """One API client: requests at random moments (two clients race each other)."""
        scenario = self.scenario
        rng = self.rng(client)
        while True:
            yield self.clock.now_ms + int(rng.expovariate(1.0 / scenario.api_gap_ms)) + 1
            if self.settling or self.clock.now_ms > scenario.horizon_ms:
                return
            names = self.live_names()
            if not names:
                continue
            action = rng.choices(API_ACTIONS, weights=scenario.api_weights)[0]
            name = rng.choice(names)
            services = self.services(client)
            fn: Callable[[], str]
            if action in ("put_same", "put_change"):
                if action == "put_change":
                    self.drafts[name] = self.changed(rng, self.drafts[name])
                fn = partial(api.replace, services, self.drafts[name])
                yield from self.api_call(client, f"{action} {name}", fn)
            elif action in ("pin", "unpin"):
                backup_id = self.some_backup(rng, name, action == "pin")
                if backup_id is not None:
                    fn = partial(api.pin, services, name, backup_id, action == "pin")
                    yield from self.api_call(client, f"{action} {name}/{backup_id}", fn)
            elif action == "trigger":
                fn = partial(api.trigger, services, name, self.trigger_overlap())
                yield from self.api_call(client, f"trigger {name}", fn)
            elif action == "purge":
                fn = partial(api.delete_purge, services, name)
                yield from self.api_call(client, f"purge {name}", fn)
            elif action == "operator_retry":
                self.operator_retry(rng, name)
            yield from self.maybe_restore_or_verify(client, name)

    def maybe_restore_or_verify(self, client: str, name: str) -> Generator[int, None, None]:
        """Knob `restore_rate` (issue 11): now and then a restore or verify request for one
        of the spec's backups, whatever its status (refusals are part of the test); drawn
        from a stream of its own, so every other draw stays as it was."""
        rng = self.rng("restores")
        if not self.scenario.restore_rate or rng.random() >= self.scenario.restore_rate:
            return
        with self.db.read() as connection:
            ids = list(
                connection.scalars(
                    select(Backup.id)
                    .join(BackupSpec)
                    .where(BackupSpec.name == name)
                    .order_by(Backup.id)
                )
            )
        if not ids:
            return
        backup_id, kind = rng.choice(ids), rng.choice(("restore", "verify"))
        fn = partial(api.restore_or_verify, self.services(client), name, backup_id, kind)
        yield from self.api_call(client, f"{kind} {name}/{backup_id}", fn)

    def trigger_overlap(self) -> str | None:
        """Now and then a trigger overrides the spec's overlapPolicy (`?overlap=`)."""
        rng = self.rng("overlap")
        return rng.choice([p.value for p in OverlapPolicy]) if rng.random() < 0.25 else None

    def changed(self, rng: random.Random, draft: SpecDraft) -> SpecDraft:
        """A PUT that changes one thing: retention, grace, timeout, the schedule or enabled;
        and now and then overlapPolicy or jitterSeconds too (drawn apart, so the other draws
        stay as they were).
        """
        overlap = self.rng("overlap")
        if overlap.random() < 0.2:
            draft = dataclasses.replace(draft, overlap_policy=overlap.choice(OVERLAP_CHOICES))
        jitter = self.rng("jitter")
        if jitter.random() < 0.15:
            draft = dataclasses.replace(draft, jitter_seconds=jitter.choice(JITTER_CHOICES))
        what = rng.choice(("retention", "grace", "timeout", "cron", "enabled"))
        if what == "retention":
            retention = dict(draft.retention)
            retention["retentionMinutely"] = rng.choice(("0", "1", "2", "3@L", "5"))
            retention["retentionHourly"] = rng.choice((None, "0", "1"))
            return dataclasses.replace(draft, retention=retention)
        if what == "grace":
            return dataclasses.replace(draft, misfire_grace_seconds=rng.choice((10, 20, 60, 3600)))
        if what == "timeout":
            return dataclasses.replace(draft, timeout_seconds=rng.choice((None, 5, 20)))
        if what == "cron":
            cron = rng.choice(("*/2 * * * * *", "*/5 * * * * *", "7 * * * * *", "0/3 * * * * *"))
            return dataclasses.replace(draft, backup_cron_string=cron)
        currently = draft.enabled is not False
        reason = "paused by a client (simulated)" if currently else None  # with enabled 0 only
        return dataclasses.replace(draft, enabled=not currently, paused_reason=reason)

    def some_backup(self, rng: random.Random, name: str, completed_only: bool) -> int | None:
        with self.db.read() as connection:
            query = select(Backup.id).join(BackupSpec).where(BackupSpec.name == name)
            if completed_only:  # what can be pinned: an EXPIRING one is rescued by it
                query = query.where(
                    Backup.status.in_((BackupStatus.COMPLETED.value, BackupStatus.EXPIRING.value))
                )
            else:
                query = query.where(Backup.pinned.is_(True))
            ids = list(connection.scalars(query.order_by(Backup.id)))
        return rng.choice(ids) if ids else None

    def operator_retry(self, rng: random.Random, name: str) -> None:
        """Someone retries a failed create_backup from Conductor's UI."""
        runs = [
            w
            for w in self.twin.workflows("create_backup")
            if w.input.get("backupName") == name
            and w.status in (WorkflowStatus.FAILED, WorkflowStatus.TIMED_OUT)
        ]
        if not runs:
            return
        run = rng.choice(runs)
        try:
            self.twin.retry_workflow(run.workflow_id)
            self.note("operator", f"retried {run.workflow_id} of {name}")
            self.count("operator.retry")
        except CONDUCTOR_ERRORS as error:
            self.note("operator", f"retry {run.workflow_id} refused: {error}")

    def purge_actor(self) -> Actor:
        names = self.live_names()
        if names and not self.settling:
            name = self.rng("purge").choice(names)
            fn = partial(api.delete_purge, self.services("api-purge"), name)
            yield from self.api_call("api-purge", f"purge {name}", fn)

    def shards_actor(self, shards: int) -> Actor:
        """Every replica is redeployed with BACKTOR_TICK_SHARDS = `shards` (knob
        `shard_changes`): the watchdog writes it as K at its next run, and passes of the old
        partition may still run beside the new shards' (docs/scheduling.md, "Shards")."""
        self.note("chaos", f"BACKTOR_TICK_SHARDS becomes {shards}")
        self.count(f"shards.{shards}")
        self.settings = dataclasses.replace(self.settings, tick_shards=shards)
        yield self.clock.now_ms

    def outage_actor(self, length: int) -> Actor:
        self.outages += 1
        self.set_fault_rates(self.scenario.fault_rate)
        self.note("chaos", f"Conductor unreachable for {length} ms")
        self.disrupt("Conductor unreachable", self.clock.now_ms + length)
        yield self.clock.now_ms + length
        self.outages -= 1
        if not self.settling:
            self.twin.faults.set_rate(None, FaultKind.UNAVAILABLE, 0.0)
            self.set_fault_rates(self.scenario.fault_rate)

    # -- replicas -------------------------------------------------------------------------------

    def replica_pass(self, name: str) -> Generator[int, None, TickReport | None]:
        """One scheduler pass by replica `name`; None when it died or the pass failed."""
        services = self.services(name)
        try:
            report = yield from self.call(
                name, partial(run_tick, services, holder=name), self.crash_plan()
            )
        except Crash as crash:
            self.note(name, str(crash))
            self.count("crash.replica")
            return None
        except CONDUCTOR_ERRORS as error:  # escaped the pass: the tick task fails
            self.note(name, f"pass failed: {type(error).__name__}: {error}")
            self.count("pass.escaped")
            return None
        except Exception as error:
            self.unexpected(f"{name} pass", error)
            return None
        self.count("pass" if getattr(report, "ran", True) else "pass.lease_held")
        return report

    def pass_actor(self, name: str, box: dict[str, TickReport | None]) -> Actor:
        """A pass of replica `name`; its report lands in `box`. A replica runs one at a time."""
        self.replica_busy.add(name)
        try:
            box["report"] = yield from self.replica_pass(name)
        finally:
            self.replica_busy.discard(name)

    def start_pass(self, name: str) -> dict[str, TickReport | None]:
        """Run a pass now, up to its first pause; the agenda carries it on from there."""
        box: dict[str, TickReport | None] = {}
        self.step(self.pass_actor(name, box))
        return box

    def replica_names(self) -> list[str]:
        return [f"replica-{i}" for i in range(self.scenario.replicas)]

    def idle_replicas(self) -> list[str]:
        return [name for name in self.replica_names() if name not in self.replica_busy]

    def tick_actor(self) -> Actor:
        """The tick task: Conductor hands it to one replica at a time, at the time it asked.

        A replica that dies holding it, or stalls past the task's response timeout, loses it:
        the watchdog replaces the tick (STALL 10 s, checked every 2 s) and another replica
        runs the next pass, while a stalled one may still wake up and finish its own.
        """
        rng = self.rng("tick")
        while not self.settling:
            idle = self.idle_replicas()
            if not idle:
                yield self.clock.now_ms + 1_000
                continue
            name = rng.choice(idle)
            box = self.start_pass(name)
            deadline = self.clock.now_ms + FAILOVER_MS
            while "report" not in box and self.clock.now_ms < deadline:
                yield self.clock.now_ms + 250
            if "report" not in box:
                self.note("tick", f"{name} holds the tick past its response timeout: failover")
                self.count("tick.failover")
                yield self.later("tick", 0, 2_000)
            elif box["report"] is None:
                yield self.later("tick", 10_000, 14_000)  # the holder died: failover
            else:
                yield self.next_pass_ms(box["report"])

    def duplicate_actor(self) -> Actor:
        """Now and then a second replica runs a pass beside the tick's holder (a redelivered
        or hand-restarted tick): the pass lease must keep them apart."""
        gap = self.scenario.duplicate_gap_ms
        rng = self.rng("duplicates")
        while not self.settling:
            yield self.clock.now_ms + int(rng.expovariate(1.0 / gap)) + 1
            idle = self.idle_replicas()
            if idle and not self.settling:
                self.start_pass(rng.choice(idle))

    def next_pass_ms(self, report: TickReport) -> int:
        """As schedule_passes asks Conductor: at the next due time (held and slept to, so a
        few ms late), within the longest callback, after 1 s at least if Conductor is unwell."""
        now = self.clock()
        longest = float(MAX_CALLBACK_SECONDS)
        wait = longest if report.next_due is None else (report.next_due - now).total_seconds()
        if not report.healthy:
            wait = max(wait, 1.0)
        wait = min(max(wait, 0.0), longest)
        return self.later("tick", int(wait * 1000) + 1, int(wait * 1000) + 250)

    # -- the real tick and the watchdog (knob `watchdog`) ------------------------------------------

    def tick_delivery_actor(self) -> Actor:
        """Conductor hands each visible evaluate_schedule task to one idle replica.

        The tick is a real backtor_scheduler workflow the watchdog starts; a replica runs its
        task as the Backtor worker does. Polls that could find nothing are left out (they
        change nothing), so the delivery wakes when a task becomes visible.
        """
        rng = self.rng("delivery")
        while not self.settling:
            idle = self.idle_replicas()
            queued = self.tick_queued_at()
            if idle and queued and min(queued) <= self.clock():
                name = rng.choice(idle)
                task = self.poll(EVALUATE_SCHEDULE, name)
                if task is not None:
                    self.step(self.tick_task_actor(name, task))
                else:
                    self.disrupt(f"{name} could not poll evaluate_schedule")
                queued = self.tick_queued_at()  # the poll took one
            yield self.next_tick_look_ms(rng, queued)

    def tick_queued_at(self) -> list[datetime]:
        """When each queued evaluate_schedule task can be polled."""
        now = self.clock()
        return [
            max((task.update_time or now), (task.scheduled_time or now))
            + timedelta(seconds=task.callback_after_seconds)
            for task in self.twin.pending_tasks((EVALUATE_SCHEDULE,))
            if task.status is TaskStatus.SCHEDULED
        ]

    def next_tick_look_ms(self, rng: random.Random, queued: list[datetime]) -> int:
        wake = self.clock.now_ms + TICK_LOOK_MS
        if queued and self.idle_replicas():
            wake = min(wake, max(_ms(min(queued) - self.clock.start), self.clock.now_ms))
        return wake + rng.randrange(1, TICK_POLL_MS + 1)

    def tick_task_actor(self, name: str, task: TaskRun) -> Actor:
        """Replica `name` runs evaluate_schedule as backtor.workers.tasks does: passes until
        the next due time is beyond the hold, then IN_PROGRESS with a callback. It dies
        holding it now and then; the watchdog's stall rule replaces the tick then."""
        self.replica_busy.add(name)
        try:
            services = self.services(name)
            fn = partial(
                schedule_passes,
                services,
                wait=self.tick_wait,
                stopping=lambda: self.settling,
                holder=name,
                shard=shard_of(task.input),
            )
            try:
                outcome = yield from self.call(name, fn, self.crash_plan(), sleeps=True)
            except Crash as crash:
                self.note(name, str(crash))
                self.count("crash.replica")
                self.disrupt(str(crash))
                self.held.discard(task.task_id)  # left IN_PROGRESS, held by no one
                return
            except CONDUCTOR_ERRORS as error:  # the SDK reports FAILED; Conductor retries
                self.note(name, f"evaluate_schedule failed: {type(error).__name__}: {error}")
                self.count("pass.escaped")
                self.disrupt(f"{name}: evaluate_schedule failed")
                outcome = TaskOutcome("FAILED", {"error": str(error)}, str(error))
            except Exception as error:
                self.unexpected(f"{name} evaluate_schedule", error)
                self.disrupt(f"{name}: evaluate_schedule raised")
                outcome = TaskOutcome("FAILED", {"error": repr(error)}, repr(error))
            self.count("task.evaluate_schedule")
            yield from self.report(name, task, outcome)
        finally:
            self.replica_busy.discard(name)

    def tick_wait(self, seconds: float) -> bool:
        """schedule_passes' sleep to a near due time: the fiber waits in simulated time.

        The process may die in its sleep (a step boundary); True: the worker is stopping.
        """
        self.boundary("tick.wait", after=True)
        act = acting()
        assert act is not None and act.fiber is not None, "the tick's handler runs in a fiber"
        self.pause(act.fiber, self.clock.now_ms + math.ceil(seconds * 1000))
        return self.settling

    def recorded_run_tick(
        self, services: Services, holder: str, shard: int = 0, budget: timedelta = PASS_BUDGET
    ) -> TickReport:
        """run_tick as schedule_passes calls it, each pass noted for the liveness check."""
        record = PassRecord(self.clock.now_ms, holder)
        self.passes.append(record)
        try:
            report = run_tick(services, holder, shard, budget)
        finally:
            record.end_ms = self.clock.now_ms
        record.ran = report.ran
        self.count("pass" if report.ran else "pass.lease_held")
        act = acting()
        if self.clock.now_ms == record.at_ms and act is not None and act.fiber is not None:
            # A pass takes time: without it, a pass due "now" (a claim lapsing this very
            # millisecond) would be run again and again at one frozen instant.
            self.pause(act.fiber, self.clock.now_ms + 1)
        return report

    def watchdog_actor(self, name: str) -> Actor:
        """Replica `name`'s watchdog loop (backtor.workers.runner.run_worker): ensure_tick
        every WATCHDOG_SECONDS; a failure is logged and the next run comes as usual."""
        holder = f"{name}:watchdog"
        while not self.settling:
            fn = partial(ensure_tick, self.services(name), holder)
            try:
                kept = yield from self.call(f"{name} watchdog", fn, self.crash_plan())
                self.count("watchdog.ran" if kept else "watchdog.lease_held")
            except Crash as crash:
                self.note(name, str(crash))
                self.count("crash.watchdog")
                self.disrupt(str(crash))
            except CONDUCTOR_ERRORS as error:
                self.note(name, f"watchdog: {type(error).__name__}: {error}")
                self.count("watchdog.failed")
                self.disrupt(f"{name} watchdog failed")
            except Exception as error:
                self.unexpected(f"{name} watchdog", error)
            yield self.clock.now_ms + WATCHDOG_MS

    def running_ticks(self) -> list[WorkflowRun]:
        return [w for w in self.twin.workflows(TICK) if w.status is WorkflowStatus.RUNNING]

    def operator_tick_actor(self) -> Actor:
        """Now and then someone restarts a tick by hand beside the running one, or terminates
        the running one in Conductor's UI: the watchdog must end up with one tick again."""
        gap = self.scenario.duplicate_gap_ms
        rng = self.rng("duplicates")
        while not self.settling:
            yield self.clock.now_ms + int(rng.expovariate(1.0 / gap)) + 1
            if self.settling:
                return
            running = self.running_ticks()
            try:
                if running and rng.random() < 0.4:
                    victim = rng.choice(running).workflow_id
                    self.twin.terminate_workflow(victim, "operator: terminated in the UI")
                    self.note("operator", f"terminated the tick {victim}")
                    self.count("operator.tick_terminated")
                    self.disrupt("an operator terminated the tick")
                else:
                    started = self.twin.start_workflow(
                        TICK,
                        version=DEFINITIONS.workflow_version(TICK),
                        correlation_id=TICK_CORRELATION_ID,
                        input={},
                    )
                    self.note("operator", f"started a tick by hand: {started}")
                    self.count("operator.tick_started")
            except CONDUCTOR_ERRORS as error:
                self.note("operator", f"tick operation refused: {error}")

    def settle_watchdog(self) -> None:
        """Faults and crashes off: one watchdog run must leave exactly the tick it names.

        Run by the lease's holder (or any replica once it lapsed), at the settle's start;
        the ticks then go (the settle loop drives passes itself) and the check is recorded.
        """
        with self.db.maker() as session:
            holder = session.scalar(
                select(SchedulerState.lease_holder).where(SchedulerState.id == SCHEDULER_STATE_ID)
            )
        names = [f"{name}:watchdog" for name in self.replica_names()]
        holder = holder if holder in names else names[0]
        until = self.clock.now_ms + 2 * WATCHDOG_MS + int(LEASE.total_seconds() * 1000)
        kept: str | None = None
        while kept is None and self.clock.now_ms <= until:
            try:
                kept = ensure_tick(self.services("settle"), holder, sweep=True)
            except CONDUCTOR_ERRORS as error:
                self.fail(f"[7 one tick] the watchdog failed with Conductor healthy: {error}")
                return
            if kept is None:  # another replica's lease: it lapses within LEASE
                self.clock.set(self.clock.now_ms + WATCHDOG_MS)
        running = [w.workflow_id for w in self.running_ticks()]
        with self.db.maker() as session:
            named = session.scalar(
                select(SchedulerState.tick_workflow_id).where(
                    SchedulerState.id == SCHEDULER_STATE_ID
                )
            )
        self.tick_check = (kept, running, named)
        with self.no_faults():
            for workflow_id in running:
                self.twin.terminate_workflow(workflow_id, "simulation: settling")

    # -- workers --------------------------------------------------------------------------------

    def poll(self, task_type: str, worker: str) -> TaskRun | None:
        try:
            task = self.twin.poll_task(task_type, worker)
        except CONDUCTOR_ERRORS:
            return None
        if task is not None:
            self.held.add(task.task_id)
        return task

    def report(
        self, worker: str, task: TaskRun, outcome: TaskOutcome
    ) -> Generator[int, None, None]:
        """Report a task's outcome, retrying as the SDK does while Conductor cannot be reached."""
        self.unreported[task.task_id] = (task, outcome)
        for attempt in range(30):
            try:
                self.twin.update_task(
                    task,
                    outcome.status,
                    dict(outcome.output),
                    callback_after_seconds=outcome.callback_after_seconds,
                    reason=outcome.reason,
                    worker_id=worker,
                )
                break
            except CONDUCTOR_ERRORS:
                if task.task_type == EVALUATE_SCHEDULE:
                    self.disrupt(f"{worker} could not report evaluate_schedule")
                yield self.clock.now_ms + min(500 * 2**attempt, 5_000)
        # Popped, not deleted: a tick task whose IN_PROGRESS landed though its answer was
        # lost is handed out again (same task id) and may be reported by another replica.
        self.unreported.pop(task.task_id, None)
        self.held.discard(task.task_id)

    def storage_actor(self) -> Actor:
        while not self.settling:
            for task_type in STORAGE_TASK_TYPES:
                for _ in range(4):
                    task = self.poll(task_type, STORAGE)
                    if task is None:
                        break
                    self.storage_take(task)
            yield self.later("storage", 100, 1_000)

    def storage_take(self, task: TaskRun) -> None:
        scenario, rng = self.scenario, self.rng("storage")
        if task.task_type == BACKUP:
            roll = rng.random()
            if roll < scenario.storage_hang:
                plan, duration = "hang", rng.randrange(10_000, 60_000)
            elif roll < scenario.storage_hang + scenario.storage_fail:
                plan, duration = rng.choice(("fail", "fail", "terminal")), rng.randrange(50, 3_000)
            else:
                plan, duration = "complete", rng.randrange(50, 2_500)
        elif task.task_type == REMOVE:
            plan = "fail" if rng.random() < scenario.remove_fail else "complete"
            duration = rng.randrange(20, 2_000)
        else:  # verify, restore: they read the data for a while
            plan = "fail" if rng.random() < scenario.remove_fail else "complete"
            duration = rng.randrange(200, 6_000)
        job = StorageJob(task, plan)
        self.storage_jobs[task.task_id] = job
        self.spawn(self.storage_finish(job), self.clock.now_ms + duration)

    def storage_do(self, job: StorageJob) -> TaskOutcome:
        """The storage side effect happens here, whatever becomes of the report."""
        task = job.task
        job.done = True
        if job.plan == "fail":
            return TaskOutcome("FAILED", {"error": "disk full (simulated)"}, "disk full")
        if job.plan == "terminal":
            return TaskOutcome("FAILED_WITH_TERMINAL_ERROR", {"error": "bad config"}, "bad config")
        if task.task_type == BACKUP:
            data_id = f"{task.input.get('backupName')}/d{next(self.data_counter)}"
            self.storage[data_id] = str(task.input.get("backupName"))
            return TaskOutcome("COMPLETED", {"dataId": data_id, "dataSizeMB": 1.5})
        data_id = str(task.input.get("dataId"))
        if task.task_type in (VERIFY, RESTORE):
            if data_id not in self.storage:
                self.fail(f"[11 restore] a {task.task_type} ran on {data_id}, already removed")
                return TaskOutcome("FAILED_WITH_TERMINAL_ERROR", {"error": "no such file"}, "gone")
            if task.task_type == VERIFY:
                return TaskOutcome("COMPLETED", {"verified": True, "details": "sim: intact"})
            return TaskOutcome("COMPLETED", {"restoredTo": "/restore/here"})
        reading = [
            other.task.task_type
            for other in self.storage_jobs.values()
            if other is not job
            and not other.done
            and other.task.task_type in (VERIFY, RESTORE)
            and other.task.input.get("dataId") == data_id
        ]
        if reading and data_id in self.storage:
            self.fail(f"[11 restore] {data_id} removed while a {reading[0]} of it ran")
        self.storage.pop(data_id, None)  # removing what is gone succeeds
        return TaskOutcome("COMPLETED", {})

    def storage_finish(self, job: StorageJob) -> Actor:
        outcome = job.outcome = self.storage_do(job)
        yield from self.report(STORAGE, job.task, outcome)
        self.storage_jobs.pop(job.task.task_id, None)

    def backtor_actor(self, name: str) -> Actor:
        services = self.services(name)
        handlers = ((APPLY_RETENTION, record_backup), (RECORD_REMOVAL, record_removed_backup))
        while not self.settling:
            for task_type, handler in handlers:
                task = self.poll(task_type, name)
                if task is None:
                    continue
                fn = partial(handler, services, task.input, task.workflow_id)
                try:
                    outcome = yield from self.call(f"{name} {task_type}", fn, self.crash_plan())
                except Crash as crash:
                    self.note(name, str(crash))
                    self.count("crash.worker")
                    self.held.discard(task.task_id)  # Conductor times it out, then retries
                    yield self.later("workers", 500, 5_000)
                    continue
                except CONDUCTOR_ERRORS as error:  # the SDK reports FAILED; Conductor retries
                    outcome = TaskOutcome("FAILED", {"error": str(error)}, str(error))
                except Exception as error:
                    self.unexpected(f"{name} {task_type}", error)
                    outcome = TaskOutcome("FAILED", {"error": repr(error)}, repr(error))
                self.count(f"task.{task_type}")
                yield from self.report(name, task, outcome)
            yield self.later("workers", 100, 1_000)

    def sweeper_actor(self) -> Actor:
        while not self.settling:
            self.sweep()
            yield self.clock.now_ms + 5_000

    def sweep(self) -> None:
        """Conductor's response timeout, which the twin leaves out: a task held by no live
        worker (its worker died, or the poll's answer was lost) fails and is retried."""
        now = self.clock()
        for task in self.twin.pending_tasks():
            if task.status is not TaskStatus.IN_PROGRESS or task.task_id in self.held:
                continue
            if now < self.swept_at(task):
                continue
            with self.no_faults():
                self.twin.update_task(task, "FAILED", reason="response timed out (simulated)")
            self.note("conductor", f"{task.task_type} {task.task_id} response timed out")
            self.count("sweeper.timeout")
            if task.task_type == EVALUATE_SCHEDULE:
                self.disrupt("evaluate_schedule timed out")

    def swept_at(self, task: TaskRun) -> datetime:
        """When Conductor's sweeper times an abandoned task out: its response timeout, plus
        however long the sweeper takes to come by (minutes, seen on a real server)."""
        extra = self.sweep_extra.get(task.task_id)
        if extra is None:
            extra = self.sweep_extra[task.task_id] = self.rng("sweeper").randrange(0, 300_000)
            if task.task_type in OWN_TASK_TYPES and self.rng("sweeper-own").random() < 0.5:
                # Seen on a real server: the sweeper never came for a dead worker's own task
                # (defect 16). Backtor must repair it itself; the sweeper then finds it ended.
                extra = self.sweep_extra[task.task_id] = NEVER_SWEPT_MS
        polled = task.update_time or task.scheduled_time or self.clock()
        return polled + timedelta(seconds=task.response_timeout_seconds, milliseconds=extra)

    def sweep_deadline(self) -> datetime | None:
        moments = [
            self.swept_at(task)
            for task in self.twin.pending_tasks()
            if task.status is TaskStatus.IN_PROGRESS and task.task_id not in self.held
        ]
        return min(moments, default=None)

    # -- settling -------------------------------------------------------------------------------

    def settle(self) -> None:
        """Faults off, no crashes, no API: drive everything until nothing changes.

        Schedules are stopped right after a pass (a PUT enabled=false at the same instant,
        so no due fire time is left unwritten), then each live spec is backed up by hand
        until its retention has caught up, so the final state can be judged.
        """
        self.settling = True
        self.crashes_on = False
        self.outages = 0
        self.twin.faults.clear()
        # Let in-flight Backtor code finish (actors take no new work now).
        self.run_agenda(
            self.clock.now_ms + 3_600_000, stop=lambda: not self.in_flight and not self._busy()
        )
        if self.in_flight:
            self.fail("settle: Backtor code still in flight after an hour of simulated time")
            return
        for _, _, actor in self.agenda:
            actor.close()
        self.agenda.clear()
        if self.scenario.watchdog:
            # Back to one shard: the settle's watchdog run ends the other shards' ticks, and
            # the settle loop's passes (shard 0) see every spec.
            self.settings = dataclasses.replace(self.settings, tick_shards=1)
            self.settle_watchdog()
        self.interleave = False
        self.finish_storage_jobs()
        for task, outcome in list(self.unreported.values()):
            self.report_now("worker", task, outcome)
        services = self.services("settle")
        deadline = self.clock() + SETTLE_HORIZON
        rounds = 0
        self.end = None
        idle = SETTLE_IDLE
        before: tuple[object, ...] = ()
        for step in range(SETTLE_STEPS):
            report = run_tick(services, holder="settle")
            self.count("settle.pass")
            if self.end is None and getattr(report, "ran", True):
                self.stop_schedules(services)
            self.drain_workers(services)
            if self.end is not None and self.quiet():
                if rounds < SETTLE_ROUNDS and self.retention_lagging():
                    self.retention_round(services)
                    rounds += 1
                    continue
                self.stats["settle.steps"] = step
                return
            after = self.fingerprint()
            idle = SETTLE_IDLE if after != before else min(8 * idle, SETTLE_IDLE_MAX)
            before = after
            upcoming = self.next_moment(report, idle)
            if upcoming > deadline:
                break
            self.clock.set(max(self.clock.now_ms + 1, _ms(upcoming - self.clock.start)))
        self.fail(f"did not settle: {self.unsettled()}")

    def _busy(self) -> bool:
        return bool(self.unreported)

    def finish_storage_jobs(self) -> None:
        """Held backup and remove tasks finish now (late, for a hung one)."""
        for job in list(self.storage_jobs.values()):
            outcome = job.outcome if job.done else self.storage_do(job)
            assert outcome is not None
            self.report_now(STORAGE, job.task, outcome)
        self.storage_jobs.clear()

    def report_now(self, worker: str, task: TaskRun, outcome: TaskOutcome) -> None:
        with self.no_faults():
            self.twin.update_task(
                task,
                outcome.status,
                dict(outcome.output),
                callback_after_seconds=outcome.callback_after_seconds,
                reason=outcome.reason,
                worker_id=worker,
            )
        self.unreported.pop(task.task_id, None)
        self.held.discard(task.task_id)

    def stop_schedules(self, services: Services) -> None:
        """PUT enabled=false for every live spec, at the instant of the pass just run."""
        self.end = self.clock()
        drafts = {s.draft.name: s.draft for s in self.scenario.specs}
        for name in self.live_names():
            with self.db.read() as connection:
                enabled = bool(
                    connection.scalar(select(BackupSpec.enabled).where(BackupSpec.name == name))
                )
            if enabled:
                draft = self._current_draft(name, drafts[name])
                api.replace(services, dataclasses.replace(draft, enabled=False))
        self.observe_specs()

    def _current_draft(self, name: str, fallback: SpecDraft) -> SpecDraft:
        """The spec as stored, as a draft (PUTs may have changed it)."""
        with self.db.maker() as session:
            spec = session.scalar(select(BackupSpec).where(BackupSpec.name == name))
            assert spec is not None
            return SpecDraft(
                name=name,
                enabled=spec.enabled,
                from_date=_iso(spec.from_date),
                to_date=_iso(spec.to_date),
                backup_cron_string=None if spec.cron_derived else spec.cron_string,
                timezone=spec.timezone,
                worker_config=spec.worker_config,
                timeout_seconds=spec.timeout_seconds,
                misfire_grace_seconds=spec.misfire_grace_seconds,
                paused_reason=spec.paused_reason,
                auto_pause_after_failures=spec.auto_pause_after_failures,
                removal_delay_seconds=spec.removal_delay_seconds,
                overlap_policy=spec.overlap_policy,
                jitter_seconds=spec.jitter_seconds,
                verify_cron_string=spec.verify_cron_string,
                verify_sample_rate=spec.verify_sample_rate,
                retention=dict(fallback.retention)
                | {
                    "retentionMinutely": spec.retention_minutely,
                    "retentionHourly": spec.retention_hourly,
                    "retentionDaily": spec.retention_daily,
                    "retentionWeekly": spec.retention_weekly,
                    "retentionMonthly": spec.retention_monthly,
                    "retentionYearly": spec.retention_yearly,
                },
            )

    def drain_workers(self, services: Services) -> None:
        """Every visible task is taken and finished at once; nothing fails any more."""
        for _ in range(50):
            progressed = False
            for task_type in STORAGE_TASK_TYPES:
                while (task := self.poll(task_type, STORAGE)) is not None:
                    progressed = True
                    job = StorageJob(task, "complete")
                    self.report_now(STORAGE, task, self.storage_do(job))
            for task_type, handler in (
                (APPLY_RETENTION, record_backup),
                (RECORD_REMOVAL, record_removed_backup),
            ):
                while (task := self.poll(task_type, "settle")) is not None:
                    progressed = True
                    try:
                        outcome = handler(services, task.input, task.workflow_id)
                    except Exception as error:
                        self.unexpected(f"settle {task_type}", error)
                        outcome = TaskOutcome("FAILED", {"error": repr(error)}, repr(error))
                    self.report_now("settle", task, outcome)
            self.sweep()
            if not progressed:
                return

    def retention_round(self, services: Services) -> None:
        """One manual backup per live spec: a retention run after every change."""
        before = self._statuses()
        for name in self.live_names():
            try:
                answer = api.trigger(services, name)
            except BacktorError as error:
                answer = f"{type(error).__name__}: {error}"
            self.note("settle", f"trigger {name} -> {answer}")
        self.round_before = before

    def _statuses(self) -> dict[int, str]:
        with self.db.read() as connection:
            rows = connection.execute(select(Backup.id, Backup.status))
            return {row.id: row.status for row in rows}

    def retention_lagging(self) -> bool:
        """Some live spec still has COMPLETED backups its plan removes (the cap held them)."""
        with self.db.maker() as session:
            for name in self.live_names():
                spec = session.scalar(select(BackupSpec).where(BackupSpec.name == name))
                if spec is None:
                    continue
                plan = plan_for(session, spec)
                waiting = {
                    str(backup_id)
                    for backup_id in session.scalars(
                        select(Backup.id).where(
                            Backup.spec_id == spec.id,
                            Backup.status == BackupStatus.EXPIRING.value,
                        )
                    )
                }
                if plan.remove_ids - waiting:  # EXPIRING ones are on their way already
                    return True
        return False

    def quiet(self) -> bool:
        if self.twin.pending_tasks():
            return False
        with self.db.read() as connection:
            return not any(connection.execute(_OPEN_WORK).one())

    def next_moment(self, report: TickReport, idle: timedelta) -> datetime:
        """The next moment anything can happen: a fire, a task, a retry, a claim lapsing.

        Backtor also acts on time by itself (timeoutSeconds, stalled own tasks), which is not
        all listed here: the clock moves at most `idle` at once, and the caller stretches
        `idle` while nothing changes (a long wait, say for Conductor's sweeper, costs few
        passes). A pass that comes late is one a slow tick could have run.
        """
        now = self.clock()
        with self.db.read() as connection:
            moments: list[datetime | None] = list(
                connection.execute(_WAKE_TIMES, {"now": now}).one()
            )
            moments += [
                since + restores.START_LAPSE + timedelta(seconds=1)
                for since in connection.execute(_STARTING_SINCE).one()
                if since is not None
            ]
            moments += [  # Backtor's own clocks: timeoutSeconds of a run, a dead worker's task
                started + timedelta(seconds=timeout)
                for started, timeout in connection.execute(_RUN_TIMEOUTS)
                if started is not None and timeout is not None
            ]
        moments += [
            (task.update_time or now) + timedelta(seconds=task.response_timeout_seconds + 16)
            for task in self.twin.pending_tasks((APPLY_RETENTION, RECORD_REMOVAL))
            if task.status is TaskStatus.IN_PROGRESS and task.task_id not in self.held
        ]
        moments += [report.next_due, self.twin.next_event_at(), self.sweep_deadline()]
        future = [m for m in moments if m is not None and m > now]
        return min([*future, now + idle]) + timedelta(milliseconds=1)

    def fingerprint(self) -> tuple[object, ...]:
        """What changes when anything happens (for the settle loop's idle steps)."""
        tasks = tuple((t.task_id, t.status) for t in self.twin.pending_tasks())
        with self.db.read() as connection:
            fires = connection.execute(_FIRE_COUNTS).all()
            backups = connection.execute(_BACKUP_COUNTS).all()
        return tasks, tuple(map(tuple, fires)), tuple(map(tuple, backups))

    def unsettled(self) -> str:
        tasks = [f"{t.task_type}:{t.status}" for t in self.twin.pending_tasks()]
        with self.db.maker() as session:
            fires = session.execute(
                select(Fire.id, Fire.status, Fire.outcome, Fire.claimed_until).where(
                    (Fire.status == FireStatus.PENDING.value)
                    | ((Fire.status == FireStatus.STARTED.value) & Fire.outcome.is_(None))
                )
            ).all()
            backups = session.execute(
                select(Backup.id, Backup.status, Backup.next_attempt_at, Backup.expires_at).where(
                    Backup.status.in_(
                        (
                            BackupStatus.REMOVING.value,
                            BackupStatus.REMOVE_FAILED.value,
                            BackupStatus.RUNNING.value,
                            BackupStatus.EXPIRING.value,
                        )
                    )
                )
            ).all()
            purging = list(
                session.scalars(select(BackupSpec.name).where(BackupSpec.deleting.is_(True)))
            )
        return (
            f"open tasks {tasks}; open fires {[tuple(f) for f in fires]}; "
            f"open backups {[tuple(b) for b in backups]}; purging {purging}"
        )


# The settle loop's questions, built once (they run at every settle step).
_OPEN_FIRE = (Fire.status == FireStatus.PENDING.value) | (
    (Fire.status == FireStatus.STARTED.value) & Fire.outcome.is_(None)
)
_OPEN_BACKUP = Backup.status.in_(
    (
        BackupStatus.REMOVING.value,
        BackupStatus.REMOVE_FAILED.value,
        BackupStatus.RUNNING.value,
        BackupStatus.EXPIRING.value,  # its removal waits for expires_at: not settled yet
    )
)
_OPEN_WORK = select(
    exists().where(_OPEN_FIRE),
    exists().where(_OPEN_BACKUP),
    exists().where(BackupSpec.deleting.is_(True)),
    exists().where(or_(*(restores.run_open(kind) for kind in restores.KINDS))),
)
# A restore or verify whose start had no clear answer is settled START_LAPSE after it.
_STARTING_SINCE = select(
    *(
        select(func.min(kind.requested_at))
        .where(kind.status == restores.STARTING)
        .scalar_subquery()
        for kind in restores.KINDS
    )
)
_NOW = bindparam("now", type_=UTCDateTime())
_WAKE_TIMES = select(
    select(func.min(Backup.next_attempt_at))
    .where(
        Backup.status.in_((BackupStatus.REMOVING.value, BackupStatus.REMOVE_FAILED.value)),
        Backup.remove_workflow_id.is_(None),
        Backup.next_attempt_at > _NOW,
    )
    .scalar_subquery(),
    select(func.min(Backup.claimed_until)).where(Backup.claimed_until >= _NOW).scalar_subquery(),
    select(func.min(Fire.claimed_until))
    .where(Fire.status == FireStatus.PENDING.value, Fire.claimed_until >= _NOW)
    .scalar_subquery(),
    select(func.min(Backup.expires_at))
    .where(Backup.status == BackupStatus.EXPIRING.value, Backup.expires_at > _NOW)
    .scalar_subquery(),
)
_RUN_TIMEOUTS = (
    select(Fire.started_at, BackupSpec.timeout_seconds)
    .join(BackupSpec, BackupSpec.id == Fire.spec_id)
    .where(
        Fire.status == FireStatus.STARTED.value,
        Fire.outcome.is_(None),
        BackupSpec.timeout_seconds.is_not(None),
    )
)
_FIRE_COUNTS = select(Fire.status, Fire.outcome, func.count()).group_by(Fire.status, Fire.outcome)
_BACKUP_COUNTS = select(Backup.status, func.count(), func.sum(Backup.remove_attempts)).group_by(
    Backup.status
)
_SPEC_SCHEDULES = select(
    BackupSpec.name,
    BackupSpec.last_update,
    BackupSpec.cron_string,
    BackupSpec.timezone,
    BackupSpec.from_date,
    BackupSpec.to_date,
    BackupSpec.enabled,
    BackupSpec.deleting,
    BackupSpec.jitter_seconds,
)


def _ms(delta: timedelta) -> int:
    return int(delta / timedelta(milliseconds=1)) + (1 if delta % timedelta(milliseconds=1) else 0)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
