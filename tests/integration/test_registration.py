"""Backtor registers its definitions idempotently and touches nothing it does not own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backtor.conductor.http import ConductorClient
from backtor.conductor.registration import DEFINITIONS, register_definitions

pytestmark = pytest.mark.integration


def test_registration_is_idempotent_and_keeps_a_tuned_storage_task(conductor_url: str) -> None:
    client = ConductorClient(conductor_url)
    register_definitions(client)
    again = register_definitions(client)
    assert again.created == [] and again.updated == []

    tuned = client.get_task_def("backup")
    assert tuned is not None
    tuned["retryCount"] = 9
    tuned["responseTimeoutSeconds"] = 1234
    client.update_task_def(tuned)
    ours = client.get_task_def("evaluate_schedule")
    assert ours is not None
    ours["retryCount"] = 1
    client.update_task_def(ours)

    report = register_definitions(client)
    assert report.updated == ["task evaluate_schedule"]
    kept = client.get_task_def("backup")
    assert kept is not None and kept["retryCount"] == 9 and kept["responseTimeoutSeconds"] == 1234
    restored = client.get_task_def("evaluate_schedule")
    assert restored is not None
    assert restored["retryCount"] == DEFINITIONS.task_defs["evaluate_schedule"]["retryCount"]
    for name, definition in DEFINITIONS.workflow_defs.items():
        registered = client.get_workflow_def(name, int(definition["version"]))
        assert registered is not None
        assert [t["name"] for t in registered["tasks"]] == [t["name"] for t in definition["tasks"]]


def test_backtor_register_command(conductor_url: str) -> None:
    command = [str(Path(sys.executable).parent / "backtor"), "register"]
    done = subprocess.run(
        command,
        env={"CONDUCTOR_API_URL": conductor_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "unchanged task backup" in done.stdout or "created   task backup" in done.stdout
    failed = subprocess.run(
        command,
        env={"CONDUCTOR_API_URL": "http://127.0.0.1:9/api", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("backtor register: ")
