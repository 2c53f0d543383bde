"""Registers Backtor's Conductor definitions, idempotently, touching nothing else.

- `backup` and `remove` are the storage workers' tasks: created only when absent, so a
  definition an operator tuned is never overwritten.
- Backtor's own tasks are created when absent and updated when their shipped content changed.
- Workflows are versioned: each shipped version is upserted as it is, and Backtor starts
  workflows by explicit version, so executions of an older version keep running unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from backtor.conductor.names import STORAGE_TASKS
from backtor.conductor.port import Conductor

log = logging.getLogger(__name__)


JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Definitions:
    task_defs: dict[str, JsonObject]
    workflow_defs: dict[str, JsonObject]

    def workflow_version(self, name: str) -> int:
        return int(self.workflow_defs[name]["version"])


@dataclass
class RegistrationReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def load_definitions() -> Definitions:
    root = resources.files("backtor.definitions")
    tasks = {
        d["name"]: d
        for d in (_read(p) for p in sorted(root.joinpath("tasks").iterdir(), key=str))
        if d is not None
    }
    workflows = {
        d["name"]: d for d in (_read(p) for p in sorted(root.iterdir(), key=str)) if d is not None
    }
    return Definitions(task_defs=tasks, workflow_defs=workflows)


def _read(path: resources.abc.Traversable) -> JsonObject | None:
    if not path.name.endswith(".json") or not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


DEFINITIONS = load_definitions()


def register_definitions(
    client: Conductor, definitions: Definitions = DEFINITIONS
) -> RegistrationReport:
    report = RegistrationReport()
    for name, task_def in definitions.task_defs.items():
        existing = client.get_task_def(name)
        if existing is None:
            client.create_task_defs([task_def])
            report.created.append(f"task {name}")
        elif name not in STORAGE_TASKS and not _contains(existing, task_def):
            client.update_task_def(task_def)
            report.updated.append(f"task {name}")
        else:
            report.unchanged.append(f"task {name}")
    stale = []
    for name, workflow_def in definitions.workflow_defs.items():
        existing = client.get_workflow_def(name, int(workflow_def["version"]))
        label = f"workflow {name} v{workflow_def['version']}"
        if existing is None:
            report.created.append(label)
            stale.append(workflow_def)
        elif not _contains(existing, workflow_def):
            report.updated.append(label)
            stale.append(workflow_def)
        else:
            report.unchanged.append(label)
    if stale:
        client.put_workflow_defs(stale)
    log.info(
        "Conductor definitions: created %s; updated %s; unchanged %d",
        ", ".join(report.created) or "none",
        ", ".join(report.updated) or "none",
        len(report.unchanged),
    )
    return report


def _contains(registered: Any, shipped: Any) -> bool:
    """True when every field Backtor ships is registered with the same value."""
    if isinstance(shipped, dict):
        return isinstance(registered, dict) and all(
            key in registered and _contains(registered[key], value)
            for key, value in shipped.items()
        )
    if isinstance(shipped, list):
        return (
            isinstance(registered, list)
            and len(registered) == len(shipped)
            and all(_contains(r, s) for r, s in zip(registered, shipped, strict=True))
        )
    return bool(registered == shipped)
