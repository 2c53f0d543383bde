"""Reading Conductor's state in tests, straight from its REST API."""

from __future__ import annotations

from typing import Any

import requests


def workflows(
    conductor_url: str, name: str, correlation_id: str, *, include_closed: bool = True
) -> list[dict[str, Any]]:
    answer = requests.get(
        f"{conductor_url}/workflow/{name}/correlated/{correlation_id}",
        params={"includeClosed": str(include_closed).lower(), "includeTasks": "false"},
        timeout=30,
    )
    answer.raise_for_status()
    return list(answer.json())


def workflow(conductor_url: str, workflow_id: str) -> dict[str, Any]:
    answer = requests.get(
        f"{conductor_url}/workflow/{workflow_id}", params={"includeTasks": "true"}, timeout=30
    )
    answer.raise_for_status()
    return dict(answer.json())
