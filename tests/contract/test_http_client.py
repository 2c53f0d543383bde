"""The HTTP client's error mapping, and the twin's faults held to it, on a local stub server.

The twin's fault kinds are the simulation's stand-in for a misbehaving server; each must raise
exactly what `ConductorClient` raises when a real server misbehaves that way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backtor.conductor.http import ConductorClient
from backtor.conductor.payloads import ConductorBadAnswer, TaskRun, TaskStatus
from backtor.conductor.twin import ANSWERED, ConductorTwin, FaultKind, Operation
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable
from tests.contract.conftest import linear, task_def
from tests.contract.stub import Answer, StubServer
from tests.support.net import free_port

TASK = TaskRun(task_id="t-1", task_type="ct", reference_name="t0", status=TaskStatus.IN_PROGRESS)

# One call per operation, the same on the client and on the twin.
CALLS: dict[Operation, Callable[[Any], object]] = {
    Operation.HEALTH: lambda c: c.is_healthy(),
    Operation.GET_TASKDEF: lambda c: c.get_task_def("ct"),
    Operation.CREATE_TASKDEFS: lambda c: c.create_task_defs([task_def("ct")]),
    Operation.UPDATE_TASKDEF: lambda c: c.update_task_def(task_def("ct")),
    Operation.GET_WORKFLOWDEF: lambda c: c.get_workflow_def("cwf", 1),
    Operation.PUT_WORKFLOWDEFS: lambda c: c.put_workflow_defs([linear("cwf", ["ct"])]),
    Operation.START_WORKFLOW: lambda c: c.start_workflow("cwf", input={}, correlation_id="c"),
    Operation.GET_CORRELATED: lambda c: c.workflows_by_correlation(
        "cwf", ["c"], include_closed=True
    ),
    Operation.GET_WORKFLOW: lambda c: c.get_workflow(c.workflow_id),
    Operation.TERMINATE_WORKFLOW: lambda c: c.terminate_workflow(c.workflow_id, "x"),
    Operation.RETRY_WORKFLOW: lambda c: c.retry_workflow(c.finished_id),
    Operation.RESTART_WORKFLOW: lambda c: c.restart_workflow(c.finished_id),
    Operation.PAUSE_WORKFLOW: lambda c: c.pause_workflow(c.workflow_id),
    Operation.RESUME_WORKFLOW: lambda c: c.resume_workflow(c.workflow_id),
    Operation.POLL_TASK: lambda c: c.poll_task("ct", "w"),
    Operation.POLL_TASKS: lambda c: c.poll_tasks("ct", "w", 2),
    Operation.UPDATE_TASK: lambda c: c.update_task(c.task, "COMPLETED", {}),
    Operation.GET_TASK: lambda c: c.get_task(c.task.task_id),
}
# What a server does that the twin's fault kind stands for (None: nobody listens).
SERVER_FOR = {
    FaultKind.UNAVAILABLE: None,
    FaultKind.THROTTLED: Answer(429, '{"message": "slow down"}'),
    FaultKind.SERVER_ERROR: Answer(500, '{"message": "boom"}'),
    FaultKind.BAD_ANSWER: Answer(200, "<html>a proxy's page</html>", content_type="text/html"),
    FaultKind.LOST_ANSWER: Answer(200, "{}", delay=0.5),
}
CLIENT_TIMEOUT = 5.0  # an answer that never comes is a stub delay against a short timeout
LOST_TIMEOUT = 0.1


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer().running() as server:
        yield server


@pytest.fixture
def client(stub: StubServer) -> Iterator[ConductorClient]:
    stub.answer = Answer()
    client = ConductorClient(stub.url, timeout=CLIENT_TIMEOUT)
    yield client
    client.close()


def _outcome(call: Callable[[Any], object], target: Any) -> tuple[Any, ...]:
    """What a caller can tell apart: the class, the HTTP status, the operation."""
    try:
        return ("answered", call(target))
    except (ConductorUnavailable, ConductorRefused) as error:
        return (type(error), getattr(error, "status", None), getattr(error, "operation", None))


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overload_statuses_are_unavailable(
    stub: StubServer, client: ConductorClient, status: int
) -> None:
    stub.answer = Answer(status, "busy")
    with pytest.raises(ConductorUnavailable):
        client.get_workflow("w-1")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ConductorRefused),
        (404, ConductorNotFound),
        (409, ConductorRefused),
        (500, ConductorRefused),
    ],
)
def test_refusals_keep_their_status(
    stub: StubServer, client: ConductorClient, status: int, error: type[Exception]
) -> None:
    stub.answer = Answer(status, f'{{"status": {status}, "message": "no, because"}}')
    with pytest.raises(ConductorRefused) as refused:
        client.retry_workflow("w-1")
    assert type(refused.value) is error
    assert (refused.value.status, refused.value.operation) == (status, "retry_workflow")
    assert "no, because" in refused.value.message


def test_nobody_listening_is_unavailable() -> None:
    client = ConductorClient(f"http://127.0.0.1:{free_port()}/api", timeout=CLIENT_TIMEOUT)
    with pytest.raises(ConductorUnavailable):
        client.get_workflow("w-1")
    assert client.is_healthy() is False


@pytest.mark.parametrize(
    ("body", "call"),
    [
        ("not json {", lambda c: c.get_workflow("w-1")),
        ("[]", lambda c: c.get_workflow("w-1")),
        ('{"workflowId": "w-1", "status": "SNOOZING"}', lambda c: c.get_workflow("w-1")),
        ("[1]", lambda c: c.get_task_def("ct")),
        ("[1]", lambda c: c.get_workflow_def("cwf", 1)),
        ('{"c": {}}', lambda c: c.workflows_by_correlation("cwf", ["c"], include_closed=True)),
        ('{"taskId": ""}', lambda c: c.poll_task("ct", "w")),
        ('{"taskId": "t"}', lambda c: c.poll_tasks("ct", "w", 2)),
        ('[{"taskId": ""}]', lambda c: c.poll_tasks("ct", "w", 2)),
        ("<html>oops</html>", lambda c: c.start_workflow("cwf", input={}, correlation_id="c")),
        ("", lambda c: c.start_workflow("cwf", input={}, correlation_id="c")),
    ],
)
def test_malformed_answers_are_bad_answers(
    stub: StubServer, client: ConductorClient, body: str, call: Callable[[Any], object]
) -> None:
    stub.answer = Answer(200, body)
    with pytest.raises(ConductorBadAnswer):
        call(client)


def test_health(stub: StubServer, client: ConductorClient) -> None:
    stub.answer = Answer(200, '{"healthy": true}')
    assert client.is_healthy() is True
    for answer in (Answer(200, '{"healthy": false}'), Answer(500, "{}"), Answer(200, "nope")):
        stub.answer = answer
        assert client.is_healthy() is False


def _prepared_twin() -> Any:
    """A twin where every call in CALLS succeeds, so only the fault decides the outcome."""
    twin: Any = ConductorTwin()
    twin.create_task_defs([task_def("ct")])
    twin.put_workflow_defs([linear("cwf", ["ct"])])
    twin.workflow_id = twin.start_workflow("cwf", input={}, correlation_id="c")
    twin.pause_workflow(twin.workflow_id)  # so that resume answers
    twin.task = twin.poll_task("ct", "w")
    twin.finished_id = twin.start_workflow("cwf", input={}, correlation_id="c")
    twin.terminate_workflow(twin.finished_id, "so that retry and restart answer")
    return twin


@pytest.mark.parametrize("kind", list(SERVER_FOR), ids=str)
@pytest.mark.parametrize("operation", list(Operation), ids=str)
def test_twin_faults_raise_what_the_client_raises(
    stub: StubServer, kind: FaultKind, operation: Operation
) -> None:
    if kind is FaultKind.BAD_ANSWER and operation not in ANSWERED | {Operation.HEALTH}:
        pytest.skip("the client reads no answer of this call")
    answer = SERVER_FOR[kind]
    url = stub.url if answer is not None else f"http://127.0.0.1:{free_port()}/api"
    stub.answer = answer or Answer()
    timeout = LOST_TIMEOUT if kind is FaultKind.LOST_ANSWER else CLIENT_TIMEOUT
    client: Any = ConductorClient(url, timeout=timeout)
    client.workflow_id, client.finished_id, client.task = "w-1", "w-2", TASK
    twin = _prepared_twin()
    twin.faults.inject(operation, kind)
    try:
        expected = _outcome(CALLS[operation], client)
        assert expected[0] != "answered" or operation is Operation.HEALTH
        assert _outcome(CALLS[operation], twin) == expected
        assert twin.faults.fired == [(operation, kind)]
    finally:
        client.close()
