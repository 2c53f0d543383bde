"""Shrink a failing seed's scenario while the same invariant still fails.

Greedy: try each simplification (no crashes, no faults, one spec fewer, a shorter run, ...)
and keep it when the failure stays. Each concern draws from its own random stream, so
turning one off leaves the others' draws as they were and a failure often survives it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tests.simulation.runner import Overrides, Result, apply_overrides, run_seed
from tests.simulation.scenario import API_ACTIONS, Scenario, generate


def kinds(result: Result) -> set[str]:
    """The invariants a result's failures name ("[2 nothing vanishes] ..." -> "2 ...")."""
    found = set()
    for failure in result.failures:
        match = re.match(r"\[([^\]]+)\]", failure)
        found.add(match.group(1) if match else failure.split(":")[0])
    return found


def _candidates(scenario: Scenario) -> Iterator[Overrides]:
    yield {"interleave": False}
    yield {"crash_rate": 0.0}
    yield {"fault_rate": 0.0}
    yield {"outages": ()}
    yield {"purge_at_ms": None}
    yield {"duplicate_gap_ms": 0}
    if scenario.watchdog:
        yield {"watchdog": False}
    yield {"replica_stall": 0.0}
    yield {"storage_hang": 0.0}
    yield {"storage_fail": 0.0}
    yield {"remove_fail": 0.0}
    yield {"api_gap_ms": 10**9}
    for index in range(len(API_ACTIONS)):
        if scenario.api_weights[index]:
            weights = list(scenario.api_weights)
            weights[index] = 0
            if any(weights):
                yield {"api_weights": tuple(weights)}
    if scenario.fault_rate > 0 and len(scenario.fault_kinds) > 1:
        for kind in scenario.fault_kinds:
            yield {"fault_kinds": (kind,)}
    yield {"api_clients": 1}
    yield {"replicas": 2}
    yield {"backtor_workers": 1}
    for setup in scenario.specs[1:]:
        yield {"drop": (setup.draft.name,)}
    for setup in scenario.specs:
        name = setup.draft.name
        for field_name in ("timeout_seconds", "from_date", "to_date"):
            if getattr(setup.draft, field_name) is not None:
                yield {f"spec.{name}.{field_name}": None}
    if scenario.horizon_ms > 10_000:
        yield {"horizon_ms": scenario.horizon_ms // 2}


def minimise(seed: int, budget: int = 80) -> tuple[Overrides, Result]:
    """The overrides of a smallest variant found that fails as the seed fails."""
    best = run_seed(seed)
    wanted = kinds(best)
    if not wanted:
        return {}, best
    overrides: Overrides = {}
    tries = 0
    changed = True
    while changed and tries < budget:
        changed = False
        current = apply_overrides(generate(seed), overrides)
        for candidate in _candidates(current):
            trial = dict(overrides)
            for key, value in candidate.items():
                if key == "drop":
                    value = tuple(trial.get("drop", ())) + tuple(value)
                trial[key] = value
            if trial == overrides:
                continue
            tries += 1
            result = run_seed(seed, overrides=trial)
            if kinds(result) & wanted:
                overrides, best, changed = trial, result, True
                break
            if tries >= budget:
                break
    return overrides, best
