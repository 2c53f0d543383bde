"""Options of the simulation tests: which seeds the general run plays, and seeds to replay.

.venv/bin/pytest tests/simulation -k replay --seed 1234 [--seed 99]
.venv/bin/pytest tests/simulation --sim-scenarios 500 --sim-start 10000 --sim-jobs 1
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simulation")
    group.addoption(
        "--seed",
        action="append",
        type=int,
        default=[],
        help="replay this simulation seed in test_replay (repeatable)",
    )
    group.addoption(
        "--sim-scenarios",
        type=int,
        default=int(os.environ.get("BACKTOR_SIM_SCENARIOS", "2000")),
        help="how many seeds the general simulation run plays (default 2000)",
    )
    group.addoption(
        "--sim-start",
        type=int,
        default=int(os.environ.get("BACKTOR_SIM_START", "0")),
        help="the general run's first seed (default 0)",
    )
    group.addoption(
        "--sim-jobs",
        type=int,
        default=int(os.environ.get("BACKTOR_SIM_JOBS", str(min(2, os.cpu_count() or 1)))),
        help="processes for the general run (default: 2, or 1 on a single core)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "simulation_soak: the long seeded runs (thousands of scenarios); a fast edit loop may "
        "deselect them with -m 'not simulation_soak' or shrink them with --sim-scenarios",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "replay_seed" in metafunc.fixturenames:
        seeds = metafunc.config.getoption("--seed")
        ids = [str(seed) for seed in seeds] or ["none"]
        metafunc.parametrize("replay_seed", seeds or [None], ids=ids)
