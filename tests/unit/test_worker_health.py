"""The worker's readiness rules and its probe server (real HTTP on a loopback port)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backtor.core.errors import SettingError
from backtor.runtime.settings import Settings
from backtor.workers.health import HealthServer, WorkerHealth, start_health_server


class Runners:
    """Stands in for conductor-python's TaskHandler: its two read-only status calls."""

    def __init__(self) -> None:
        self.alive = True

    def is_healthy(self) -> bool:
        return self.alive

    def get_worker_process_status(self) -> list[dict[str, Any]]:
        return [{"worker": "evaluate_schedule", "alive": self.alive, "restart_count": 0}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_only_when_every_check_passes() -> None:
    clock = Clock()
    conductor = {"up": True}
    health = WorkerHealth(lambda: conductor["up"], watchdog_every=10, clock=clock)
    ready, details = health.readiness()
    assert not ready
    assert details["checks"] == {
        "registered": False,
        "runners": False,
        "conductor": False,
        "watchdog": False,
    }
    runners = Runners()
    health.registered = True
    health.runners = runners
    health.check_conductor()
    health.watchdog_ran()
    ready, details = health.readiness()
    assert ready, details
    assert details["runners"] == [{"task": "evaluate_schedule", "alive": True, "restarts": 0}]

    runners.alive = False  # a runner process died
    assert not health.readiness()[0]
    runners.alive = True

    clock.now += 36  # the watchdog has not completed a pass for 3 rounds and more
    ready, details = health.readiness()
    assert not ready
    assert details["checks"]["watchdog"] is False
    health.watchdog_ran()
    health.check_conductor()
    assert health.readiness()[0]

    conductor["up"] = False
    health.check_conductor()
    assert health.readiness()[1]["checks"]["conductor"] is False


def test_the_probe_server_answers_health_and_ready() -> None:
    health = WorkerHealth(lambda: True, watchdog_every=10)
    server = HealthServer(health, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.get(f"{base}/health", timeout=5).json() == {"status": "ok"}
        answer = requests.get(f"{base}/ready", timeout=5)
        assert answer.status_code == 503
        assert answer.json()["checks"]["registered"] is False
        health.registered = True
        health.runners = Runners()
        health.check_conductor()
        health.watchdog_ran()
        answer = requests.get(f"{base}/ready", timeout=5)
        assert answer.status_code == 200
        assert answer.json()["status"] == "ready"
        assert requests.get(f"{base}/elsewhere", timeout=5).status_code == 404
    finally:
        server.close()


def test_port_setting() -> None:
    assert Settings.from_env({}).worker_health_port == 6001
    assert Settings.from_env({}).worker_health_host == "0.0.0.0"
    off = Settings.from_env({"BACKTOR_WORKER_HEALTH_PORT": "0"})
    assert off.worker_health_port == 0
    health = WorkerHealth(lambda: True, watchdog_every=10)
    assert start_health_server(health, off.worker_health_host, off.worker_health_port) is None
    with pytest.raises(SettingError, match="BACKTOR_WORKER_HEALTH_PORT='70000'"):
        Settings.from_env({"BACKTOR_WORKER_HEALTH_PORT": "70000"})


def test_a_taken_port_leaves_the_worker_running_without_probes() -> None:
    health = WorkerHealth(lambda: True, watchdog_every=10)
    first = HealthServer(health, "127.0.0.1", 0).start()
    try:
        settings = Settings.from_env(
            {
                "BACKTOR_WORKER_HEALTH_PORT": str(first.port),
                "BACKTOR_WORKER_HEALTH_HOST": "127.0.0.1",
            }
        )
        assert (
            start_health_server(health, settings.worker_health_host, settings.worker_health_port)
            is None
        )
    finally:
        first.close()
