"""Definitions: what Backtor's registration reads and writes."""

from __future__ import annotations

from typing import Any

import pytest

from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.core.errors import ConductorNotFound, ConductorRefused
from tests.contract.conftest import Backend, linear, task_def, unique


def test_task_defs_create_get_update(backend: Backend) -> None:
    conductor = backend.conductor
    name = unique("def")
    assert conductor.get_task_def(name) is None
    conductor.create_task_defs([{"name": name, "ownerEmail": "x@y"}])
    stored = conductor.get_task_def(name)
    assert stored is not None
    # the server's defaults for what was left out
    assert (stored["retryCount"], stored["retryLogic"], stored["retryDelaySeconds"]) == (
        3,
        "FIXED",
        60,
    )
    assert (stored["timeoutSeconds"], stored["responseTimeoutSeconds"]) == (0, 3600)

    conductor.update_task_def({**stored, "retryCount": 7})
    again = conductor.get_task_def(name)
    assert again is not None and again["retryCount"] == 7
    conductor.create_task_defs([task_def(name, retryCount=5)])  # creating again overwrites
    assert (conductor.get_task_def(name) or {})["retryCount"] == 5

    with pytest.raises(ConductorNotFound) as missing:
        conductor.update_task_def(task_def(unique("def")))
    assert missing.value.status == 404
    with pytest.raises(ConductorRefused) as invalid:
        conductor.create_task_defs([task_def(unique("def"), timeoutSeconds=5)])
    assert invalid.value.status == 400  # responseTimeoutSeconds must be below timeoutSeconds
    with pytest.raises(ConductorRefused) as nameless:
        conductor.create_task_defs([{"retryCount": 1}])
    assert nameless.value.status == 400


def test_workflow_defs_by_version(backend: Backend) -> None:
    conductor = backend.conductor
    task, workflow = unique("def"), unique("wdef")
    conductor.create_task_defs([task_def(task)])
    assert conductor.get_workflow_def(workflow, 1) is None
    conductor.put_workflow_defs(
        [
            {**linear(workflow, [task]), "version": 1, "description": "one"},
            {**linear(workflow, [task]), "version": 2, "description": "two"},
        ]
    )
    one, two = conductor.get_workflow_def(workflow, 1), conductor.get_workflow_def(workflow, 2)
    assert one is not None and one["description"] == "one"
    assert two is not None and two["description"] == "two"
    assert conductor.get_workflow_def(workflow, 3) is None
    conductor.put_workflow_defs([{**linear(workflow, [task]), "description": "one again"}])
    assert (conductor.get_workflow_def(workflow, 1) or {})["description"] == "one again"
    with pytest.raises(ConductorRefused) as empty:
        conductor.put_workflow_defs([{**linear(workflow, [task]), "tasks": []}])
    with pytest.raises(ConductorRefused) as nameless:
        conductor.put_workflow_defs([{**linear(workflow, [task]), "name": ""}])
    assert empty.value.status == nameless.value.status == 400
    unversioned = linear(unique("wdef"), [task])
    del unversioned["version"]
    conductor.put_workflow_defs([unversioned])
    assert (conductor.get_workflow_def(unversioned["name"], 1) or {}).get("version") == 1


def test_shipped_definitions_register_idempotently(backend: Backend) -> None:
    register_definitions(backend.conductor)
    again = register_definitions(backend.conductor)
    assert again.created == [] and again.updated == []
    for name, definition in DEFINITIONS.workflow_defs.items():
        registered = backend.conductor.get_workflow_def(name, int(definition["version"]))
        assert registered is not None
        assert _kept(registered["tasks"], definition["tasks"]), name


def _kept(registered: Any, shipped: Any) -> bool:
    """Every field shipped, at any depth (a SWITCH's branches too), registered as it is; the
    server may add its defaults beside them."""
    if isinstance(shipped, dict):
        return isinstance(registered, dict) and all(
            key in registered and _kept(registered[key], value) for key, value in shipped.items()
        )
    if isinstance(shipped, list):
        return (
            isinstance(registered, list)
            and len(registered) == len(shipped)
            and all(_kept(r, s) for r, s in zip(registered, shipped, strict=True))
        )
    return bool(registered == shipped)
