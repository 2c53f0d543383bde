"""Conductor in tests, straight from its REST API: reading its state, stopping a test's
runs, and playing a worker that holds a task."""

from __future__ import annotations

from typing import Any

import requests

from tests.support.waiting import wait_until

HOLDER = "test-holder"  # the worker id under which a test holds a task


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


def stop_open_runs(
    conductor_url: str, workflow_name: str, correlation_id: str, reason: str = "test over"
) -> None:
    """Terminate and delete the open runs of `workflow_name` correlated to `correlation_id`:
    a test's leftovers on the shared server (a run that just ended is left alone)."""
    for run in workflows(conductor_url, workflow_name, correlation_id, include_closed=False):
        requests.delete(
            f"{conductor_url}/workflow/{run['workflowId']}",
            params={"reason": reason},
            timeout=10,
        )


def hold_task(
    conductor_url: str, task_type: str, workflow_id: str, *, timeout: float = 60
) -> dict[str, Any]:
    """Poll the `task_type` task of run `workflow_id` as a worker would and keep it, IN
    PROGRESS, until `hand_back`: a worker slow at it. The caller makes sure no other worker
    polls `task_type` meanwhile; another run's task polled on the way is handed back."""

    def polled() -> dict[str, Any]:
        answer = requests.get(
            f"{conductor_url}/tasks/poll/{task_type}", params={"workerid": HOLDER}, timeout=10
        )
        answer.raise_for_status()
        if answer.status_code != 200 or not answer.content:
            return {}
        task = dict(answer.json())
        if task["workflowInstanceId"] == workflow_id:
            return task
        hand_back(conductor_url, task)
        return {}

    return wait_until(polled, timeout=timeout, what=f"the {task_type} task of {workflow_id}")


def hand_back(conductor_url: str, task: dict[str, Any]) -> None:
    """Give a held task back (IN_PROGRESS, no callback delay), as a stopping worker does:
    Conductor queues it again for the next worker, no retry spent."""
    answer = requests.post(
        f"{conductor_url}/tasks",
        json={
            "taskId": task["taskId"],
            "workflowInstanceId": task["workflowInstanceId"],
            "workerId": HOLDER,
            "status": "IN_PROGRESS",
            "callbackAfterSeconds": 0,
            "outputData": {},
        },
        timeout=10,
    )
    answer.raise_for_status()
