"""The real Conductor server answers a full round trip through conductor-python."""

from __future__ import annotations

import time
import uuid

import pytest
from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models.start_workflow_request import StartWorkflowRequest
from conductor.client.http.models.task_def import TaskDef
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.workflow_def import WorkflowDef
from conductor.client.http.models.workflow_task import WorkflowTask
from conductor.client.orkes_clients import OrkesClients

pytestmark = pytest.mark.integration


def test_register_start_poll_complete(conductor_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    task_name = f"foundation_task_{suffix}"
    workflow_name = f"foundation_wf_{suffix}"
    clients = OrkesClients(Configuration(server_api_url=conductor_url))
    metadata = clients.get_metadata_client()
    workflows = clients.get_workflow_client()
    tasks = clients.get_task_client()

    metadata.register_task_def(
        TaskDef(name=task_name, retry_count=0, timeout_seconds=60, response_timeout_seconds=30)
    )
    metadata.register_workflow_def(
        WorkflowDef(
            name=workflow_name,
            version=1,
            tasks=[WorkflowTask(name=task_name, task_reference_name="only", type="SIMPLE")],
            timeout_seconds=120,
            timeout_policy="TIME_OUT_WF",
        ),
        overwrite=True,
    )
    workflow_id = workflows.start_workflow(
        StartWorkflowRequest(name=workflow_name, version=1, input={"who": "backtor"})
    )

    task = None
    deadline = time.monotonic() + 30
    while task is None and time.monotonic() < deadline:
        task = tasks.poll_task(task_name, worker_id="foundation-test")
        if task is None:
            time.sleep(0.2)
    assert task is not None, "the task never reached the poller"
    assert task.workflow_instance_id == workflow_id
    assert task.input_data == {}  # the workflow task maps no inputs

    tasks.update_task(
        TaskResult(
            workflow_instance_id=workflow_id,
            task_id=task.task_id,
            worker_id="foundation-test",
            status="COMPLETED",
            output_data={"greeting": "hello"},
        )
    )

    status = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = workflows.get_workflow(workflow_id, include_tasks=True)
        if status.status == "COMPLETED":
            break
        time.sleep(0.2)
    assert status is not None and status.status == "COMPLETED"
    assert status.tasks[0].status == "COMPLETED"
    assert status.tasks[0].output_data == {"greeting": "hello"}
