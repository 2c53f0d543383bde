"""The Conductor port over Conductor's REST API: one request per call, typed answers.

The SDK's generated clients stay in the workers (TaskHandler); the control plane uses plain
HTTP so that each call is one request, errors map to Backtor's Conductor errors, and every
execution is parsed once into `WorkflowRun`/`TaskRun` (backtor.conductor.payloads).

A secured Conductor: the client sends the credentials of `auth` (backtor.conductor.auth), by
default those of the process's settings; a 401 is answered with one fresh token and one
retry, then ConductorAuthRejected.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from backtor.conductor.auth import (
    FROM_ENVIRONMENT,
    TOKEN_HEADER,
    AuthChoice,
    TokenSource,
    rejection,
    resolve,
    scrub,
)
from backtor.conductor.payloads import (
    ConductorBadAnswer,
    TaskRun,
    WorkflowRun,
    parse_task,
    parse_workflow,
)
from backtor.core.errors import (
    BacktorError,
    ConductorNotFound,
    ConductorRefused,
    ConductorUnavailable,
)
from backtor.observability import telemetry

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]


# Overloaded, restarting or behind a failing proxy: worth a retry, unlike a refusal.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
# What the server answers a start with: the new workflow's id, as plain text.
_WORKFLOW_ID = re.compile(r"[\w.:-]{1,200}")


# A start gives up sooner than other calls: the scheduler starts a fire only while its
# claim has more than this left (backtor.scheduling.fires.START_MARGIN), so a start that
# times out has landed, or never will, before another attempt may look for it.
START_TIMEOUT_SECONDS = 5.0


class ConductorClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        auth_token: str | None = None,
        pool_size: int = 16,
        auth: AuthChoice = FROM_ENVIRONMENT,
    ) -> None:
        """`auth`: Conductor's credentials (default: the environment's, as Settings reads
        them; None: none). `auth_token`: a fixed X-Authorization token, for callers that
        manage tokens themselves."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Accept"] = "application/json"
        if auth_token:
            self._session.headers[TOKEN_HEADER] = auth_token
        self._auth = resolve(auth)
        self._tokens: TokenSource | None = None
        if self._auth is not None:
            self._session.headers.update(self._auth.static_headers())
            if self._auth.uses_token:
                self._tokens = TokenSource(
                    self.base_url, self._auth, self._session, timeout=timeout
                )

    def __repr__(self) -> str:
        return f"ConductorClient({self.base_url!r}, auth={self._auth!r})"

    def close(self) -> None:
        self._session.close()

    # -- health -------------------------------------------------------------------------------

    def is_healthy(self) -> bool:
        root = self.base_url.removesuffix("/api")
        try:
            headers = self._tokens.headers() if self._tokens is not None else None
            answer = self._session.get(f"{root}/health", timeout=self.timeout, headers=headers)
            body = answer.json() if answer.ok else None
        except (requests.RequestException, ValueError, BacktorError):
            return False
        return isinstance(body, dict) and bool(body.get("healthy", False))

    # -- metadata -----------------------------------------------------------------------------

    def get_task_def(self, name: str) -> JsonObject | None:
        try:
            answer = self._call("GET", f"/metadata/taskdefs/{_seg(name)}", "get_taskdef")
        except ConductorNotFound:
            return None
        return _object(answer, "get_taskdef")

    def create_task_defs(self, definitions: Sequence[Mapping[str, Any]]) -> None:
        self._call("POST", "/metadata/taskdefs", "create_taskdefs", json=list(definitions))

    def update_task_def(self, definition: Mapping[str, Any]) -> None:
        self._call("PUT", "/metadata/taskdefs", "update_taskdef", json=dict(definition))

    def get_workflow_def(self, name: str, version: int) -> JsonObject | None:
        try:
            answer = self._call(
                "GET",
                f"/metadata/workflow/{_seg(name)}",
                "get_workflowdef",
                params={"version": version},
            )
        except ConductorNotFound:
            return None
        return _object(answer, "get_workflowdef")

    def put_workflow_defs(self, definitions: Sequence[Mapping[str, Any]]) -> None:
        """Create or update the given versions (PUT is Conductor's upsert)."""
        self._call("PUT", "/metadata/workflow", "put_workflowdefs", json=list(definitions))

    # -- executions ---------------------------------------------------------------------------

    def start_workflow(
        self,
        name: str,
        *,
        input: Mapping[str, Any],
        correlation_id: str,
        version: int | None = None,
    ) -> str:
        body: JsonObject = {"name": name, "input": dict(input), "correlationId": correlation_id}
        if version is not None:
            body["version"] = version
        answer = str(
            self._call("POST", "/workflow", "start_workflow", json=body, expect_json=False)
        ).strip()
        if not _WORKFLOW_ID.fullmatch(answer):
            raise ConductorBadAnswer("start_workflow", f"not a workflow id: {answer[:100]!r}")
        return answer

    def workflows_by_correlation(
        self, name: str, correlation_ids: Sequence[str], *, include_closed: bool
    ) -> dict[str, list[WorkflowRun]]:
        """Executions of `name` per correlation id, from the execution store (not the index)."""
        if not correlation_ids:
            return {}
        operation = "get_correlated"
        answer = self._call(
            "POST",
            f"/workflow/{_seg(name)}/correlated",
            operation,
            params={"includeClosed": _flag(include_closed), "includeTasks": "false"},
            json=list(correlation_ids),
        )
        if not isinstance(answer, dict):
            raise ConductorBadAnswer(operation, "correlated workflows are not an object")
        found: dict[str, list[WorkflowRun]] = {}
        for key, runs in answer.items():
            if not isinstance(runs, list):
                raise ConductorBadAnswer(operation, f"workflows of {key!r} are not a list")
            found[str(key)] = [parse_workflow(run, operation) for run in runs]
        return found

    def get_workflow(self, workflow_id: str, *, include_tasks: bool = True) -> WorkflowRun:
        operation = "get_workflow"
        answer = self._call(
            "GET",
            f"/workflow/{_seg(workflow_id)}",
            operation,
            params={"includeTasks": _flag(include_tasks)},
        )
        return parse_workflow(answer, operation)

    def terminate_workflow(self, workflow_id: str, reason: str) -> None:
        self._call(
            "DELETE",
            f"/workflow/{_seg(workflow_id)}",
            "terminate_workflow",
            params={"reason": reason},
            expect_json=False,
        )

    def retry_workflow(self, workflow_id: str) -> None:
        self._call(
            "POST", f"/workflow/{_seg(workflow_id)}/retry", "retry_workflow", expect_json=False
        )

    def restart_workflow(self, workflow_id: str) -> None:
        self._call(
            "POST", f"/workflow/{_seg(workflow_id)}/restart", "restart_workflow", expect_json=False
        )

    def pause_workflow(self, workflow_id: str) -> None:
        """An operator's action (Backtor never pauses); the contract suite pauses with it."""
        self._call(
            "PUT", f"/workflow/{_seg(workflow_id)}/pause", "pause_workflow", expect_json=False
        )

    def resume_workflow(self, workflow_id: str) -> None:
        self._call(
            "PUT", f"/workflow/{_seg(workflow_id)}/resume", "resume_workflow", expect_json=False
        )

    # -- the task queue (what a worker does) -----------------------------------------------------

    def poll_task(self, task_type: str, worker_id: str) -> TaskRun | None:
        answer = self._call(
            "GET",
            f"/tasks/poll/{_seg(task_type)}",
            "poll_task",
            params={"workerid": worker_id},
        )
        return None if not answer else parse_task(answer, "poll_task")

    def poll_tasks(
        self, task_type: str, worker_id: str, count: int, wait_ms: int = 0
    ) -> list[TaskRun]:
        """Up to `count` tasks; Conductor holds the request up to `wait_ms` while none is
        queued (a long poll: an idle worker asks once a wait, not once a poll interval)."""
        answer = self._call(
            "GET",
            f"/tasks/poll/batch/{_seg(task_type)}",
            "poll_tasks",
            params={"workerid": worker_id, "count": count, "timeout": wait_ms},
            timeout=self.timeout + wait_ms / 1000,
        )
        if answer is None:
            return []
        if not isinstance(answer, list):
            raise ConductorBadAnswer("poll_tasks", f"not a list: {type(answer).__name__}")
        return [parse_task(task, "poll_tasks") for task in answer]

    def get_task(self, task_id: str) -> TaskRun:
        answer = self._call("GET", f"/tasks/{_seg(task_id)}", "get_task")
        return parse_task(answer, "get_task")

    def update_task(
        self,
        task: TaskRun,
        status: str,
        output: Mapping[str, Any] | None = None,
        *,
        callback_after_seconds: int = 0,
        reason: str | None = None,
        worker_id: str = "",
    ) -> None:
        body: JsonObject = {
            "workflowInstanceId": task.workflow_id,
            "taskId": task.task_id,
            "status": status,
            "outputData": dict(output or {}),
            "callbackAfterSeconds": callback_after_seconds,
            "workerId": worker_id,
        }
        if reason is not None:
            body["reasonForIncompletion"] = reason
        self._call("POST", "/tasks", "update_task", json=body, expect_json=False)

    # -- plumbing -----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        expect_json: bool = True,
        timeout: float | None = None,
    ) -> Any:
        with _observed(operation) as outcome:
            answer = self._send(
                method, path, operation, outcome, params=params, json=json, timeout=timeout
            )
            if answer.status_code == 401 and self._tokens is not None:
                # Revoked or expired early: one fresh token, one retry (a 401 did nothing).
                self._tokens.refused(str(answer.request.headers.get(TOKEN_HEADER, "")))
                answer = self._send(
                    method, path, operation, outcome, params=params, json=json, timeout=timeout
                )
            if answer.status_code == 401:
                where = f"{method} {self.base_url}{path}"
                said = scrub(_message(answer), self._auth)[:200]
                raise rejection(self._auth, operation, 401, where, said)
            if answer.status_code in _UNAVAILABLE_STATUSES:
                raise ConductorUnavailable(
                    f"Conductor {operation}: HTTP {answer.status_code} {answer.text[:200]}"
                )
            if answer.status_code == 404:
                raise ConductorNotFound(operation, 404, _message(answer))
            if not answer.ok:
                raise ConductorRefused(operation, answer.status_code, _message(answer))
            if not expect_json:
                return answer.text
            try:
                return answer.json() if answer.content else None
            except ValueError:
                raise ConductorBadAnswer(operation, f"not JSON: {answer.text[:100]!r}") from None

    def _send(
        self,
        method: str,
        path: str,
        operation: str,
        outcome: dict[str, str],
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        timeout: float | None = None,
    ) -> requests.Response:
        """One request, with a current token when Conductor takes a key and secret."""
        if timeout is None:
            timeout = (
                min(self.timeout, START_TIMEOUT_SECONDS)
                if operation == "start_workflow"
                else self.timeout
            )
        headers = self._tokens.headers() if self._tokens is not None else None
        try:
            answer = self._session.request(
                method,
                self.base_url + path,
                params=params,
                json=json,
                timeout=timeout,
                headers=headers,
            )
        except requests.RequestException as exc:
            outcome["status"] = "unavailable"
            raise ConductorUnavailable(f"Conductor {operation}: {exc}") from exc
        outcome["status"] = str(answer.status_code)
        return answer


@contextmanager
def _observed(operation: str) -> Iterator[dict[str, str]]:
    outcome = {"status": "error"}
    started = time.perf_counter()
    try:
        yield outcome
    finally:
        telemetry.observe_conductor_call(
            operation, outcome["status"], time.perf_counter() - started
        )


def _object(answer: Any, operation: str) -> JsonObject:
    if not isinstance(answer, dict):
        raise ConductorBadAnswer(operation, f"a definition is not an object: {answer!r:.100}")
    return answer


def _message(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("message", answer.text))[:500]
    except ValueError:
        return answer.text[:500]


def _seg(value: str) -> str:
    """Quote one path segment, so a name can never reach another route."""
    return quote(value, safe="")


def _flag(value: bool) -> str:
    return "true" if value else "false"


if TYPE_CHECKING:
    from backtor.conductor.port import Conductor, TaskQueue

    def _implements(client: ConductorClient) -> tuple[Conductor, TaskQueue]:
        """mypy checks here that the client satisfies both Protocols."""
        return client, client
