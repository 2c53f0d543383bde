"""Run one seed: generate, play, settle, check. Shared by the tests, the replay and the soak."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backtor.conductor.twin import FaultKind
from tests.simulation.fibers import FiberPool
from tests.simulation.invariants import check_all
from tests.simulation.scenario import Scenario, generate
from tests.simulation.world import Database, World, deterministic

_state: dict[str, object] = {}


Overrides = dict[str, Any]


def _literal(value: Any) -> Any:
    """A value as Python literal syntax can spell it (enums by their value)."""
    if isinstance(value, tuple):
        return tuple(_literal(item) for item in value)
    return value.value if isinstance(value, FaultKind) else value


def replay_command(seed: int, overrides: Overrides | None = None) -> str:
    sets = "".join(
        f' --set "{key}={_literal(value)!r}"' for key, value in (overrides or {}).items()
    )
    return f".venv/bin/python -m tests.simulation.replay {seed}{sets}"


def apply_overrides(scenario: Scenario, overrides: Overrides) -> Scenario:
    """A seed's scenario with some fields changed (what the minimiser and --set do).

    Keys: a Scenario field; "drop" (spec names to leave out); "spec.NAME.FIELD" (a field of
    that spec's draft).
    """
    plain = {k: v for k, v in overrides.items() if k != "drop" and not k.startswith("spec.")}
    if "fault_kinds" in plain:
        plain["fault_kinds"] = tuple(FaultKind(kind) for kind in plain["fault_kinds"])
    specs = [s for s in scenario.specs if s.draft.name not in overrides.get("drop", ())]
    for key, value in overrides.items():
        if key.startswith("spec."):
            _, name, field_name = key.split(".", 2)
            specs = [
                dataclasses.replace(s, draft=dataclasses.replace(s.draft, **{field_name: value}))
                if s.draft.name == name
                else s
                for s in specs
            ]
    return dataclasses.replace(scenario, specs=tuple(specs), **plain)


@dataclass
class Result:
    seed: int
    scenario: Scenario
    failures: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    trace: list[tuple[int, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {len(self.failures)} failure(s); replay: "
            f"{replay_command(self.seed)}"
        ]
        lines += [f"  {failure}" for failure in self.failures]
        return "\n".join(lines)


def forget_process_state() -> None:
    """In a forked child: the parent's SQLite connection and fiber threads are not usable."""
    _state.clear()


def _database() -> Database:
    db = _state.get("db")
    if db is None:
        db = _state["db"] = Database()
    assert isinstance(db, Database)
    return db


def _pool() -> FiberPool:
    pool = _state.get("pool")
    if pool is None:
        pool = _state["pool"] = FiberPool()
    assert isinstance(pool, FiberPool)
    return pool


class _TraceHandler(logging.Handler):
    def __init__(self, world: World) -> None:
        super().__init__(logging.DEBUG)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        self.world.note(record.name.removeprefix("backtor."), record.getMessage())


@contextmanager
def _quiet_logs(world: World | None) -> Iterator[None]:
    """Backtor's logs off (they cost time), or into the trace when replaying."""
    logger = logging.getLogger("backtor")
    saved = (logger.level, logger.propagate)
    handler = _TraceHandler(world) if world is not None else None
    if handler is not None:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if handler is not None:
            logger.removeHandler(handler)


def run_seed(seed: int, *, verbose: bool = False, overrides: Overrides | None = None) -> Result:
    """Play one seed's scenario; a harness error is a failure, never swallowed."""
    scenario = generate(seed)
    if overrides:
        scenario = apply_overrides(scenario, overrides)
    return run_scenario(scenario, verbose=verbose)


def run_scenario(scenario: Scenario, *, verbose: bool = False) -> Result:
    started, cpu = time.perf_counter(), time.process_time()
    db = _database()
    db.reset()
    with deterministic():
        world = World(scenario, db, _pool())
        with _quiet_logs(world if verbose else None):
            try:
                world.run()
                failures = world.failures + check_all(world)
            finally:
                for _, _, actor in world.agenda:
                    actor.close()
                world.agenda.clear()
    return Result(
        seed=scenario.seed,
        scenario=scenario,
        failures=failures,
        stats=dict(world.stats),
        trace=world.trace if verbose else [],
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu,
    )
