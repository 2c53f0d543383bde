"""An in-memory Conductor for fast, deterministic simulation: both Protocols of the port.

It models what tests/contract holds it to on a real Conductor OSS 3.32 server: definitions,
linear workflows of SIMPLE tasks with their input expressions, the task queue (callbacks,
retries per the task def), terminate/retry/restart, workflow timeouts (TIME_OUT_WF) and
pause/resume, quirks included (retrying a RUNNING workflow is a 404; an IN_PROGRESS task
with a callback shows as SCHEDULED). Time comes from an injected clock and is evaluated at
each call: no threads, no sleeping. Not modelled, because the real server does not do it
dependably: a task's response timeout (a task held by a dead worker stays IN_PROGRESS) and
task-level timeouts. Faults (`twin.faults`) raise exactly what `ConductorClient` raises.

System tasks, minimally: the ones the start fence of create_backup and remove_backup is made
of (docs/scheduling.md, "The start fence"), run synchronously when the sequence reaches them,
as the server's decider does (in the start call itself for the first ones), each recorded
COMPLETED:
- NOOP; SET_VARIABLE (its input merged into the workflow's variables, which a restart keeps,
  `${workflow.variables.x}` reads them);
- SWITCH with evaluatorType value-param: the case named by `input[expression]`, else the
  defaultCase; a branch may hold system tasks only (run in place, they carry the SWITCH's
  position, so the next top-level task follows them);
- TERMINATE: the workflow ends with its terminationStatus, terminationReason (the server's
  default reason when blank) and, as output, its workflowOutput;
- JSON_JQ_TRANSFORM only for the jq programs in `JQ_PROGRAMS`, matched on the exact
  queryExpression text, each with a Python equivalent (the twin runs no jq). Anything else
  (another program, INLINE, another evaluator, a SIMPLE task inside a branch) is refused
  with NotImplementedError when the definition is registered, so a changed fence cannot
  go unnoticed: the contract tests (tests/contract/test_start_fence.py) hold the Python
  equivalent to the server's jq.
"""

from __future__ import annotations

import copy
import functools
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from backtor.conductor.payloads import (
    ConductorBadAnswer,
    TaskRun,
    TaskStatus,
    WorkflowRun,
    WorkflowStatus,
    to_epoch_ms,
)
from backtor.conductor.port import Conductor, JsonObject, TaskQueue
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable

T = TypeVar("T")
P = ParamSpec("P")
Clock = Callable[[], datetime]

# What the server assumes for a SIMPLE task that has no registered definition.
DEFAULT_TASK_DEF: Mapping[str, Any] = {
    "retryCount": 3,
    "retryLogic": "FIXED",
    "retryDelaySeconds": 60,
    "timeoutSeconds": 0,
    "responseTimeoutSeconds": 3600,
    "timeoutPolicy": "TIME_OUT_WF",
}
_MODELLED_RETRY_LOGIC = frozenset({"FIXED", "EXPONENTIAL_BACKOFF"})
# What retrying a workflow re-runs: its last task, unless that one completed.
_RETRYABLE = frozenset(
    {
        TaskStatus.FAILED,
        TaskStatus.FAILED_WITH_TERMINAL_ERROR,
        TaskStatus.TIMED_OUT,
        TaskStatus.CANCELED,
    }
)
_UPDATES = frozenset(
    {
        TaskStatus.IN_PROGRESS,
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.FAILED_WITH_TERMINAL_ERROR,
    }
)
_VALIDATION = "Validation failed, check below errors for detail."
_EXPRESSION = re.compile(r"\$\{([^}]+)\}")
SIMPLE = "SIMPLE"
_TERMINATION = {
    "COMPLETED": WorkflowStatus.COMPLETED,
    "FAILED": WorkflowStatus.FAILED,
    "TERMINATED": WorkflowStatus.TERMINATED,
}
# The jq program of the `start_fence` task, verbatim (workflows/create_backup.json and
# workflows/remove_backup.json carry the same one).
START_FENCE_QUERY = (
    'if .admittedAt != null then {verdict: "readmitted", admittedAt: .admittedAt} '
    'elif .startBy == null then {verdict: "unfenced", admittedAt: .receivedAt} '
    'elif .receivedAt > (.startBy | tonumber) then {verdict: "late", admittedAt: null} '
    'else {verdict: "admitted", admittedAt: .receivedAt} end'
)


class Operation(StrEnum):
    """The twin's calls, named as `ConductorClient` names them (its errors carry the name)."""

    HEALTH = "health"
    GET_TASKDEF = "get_taskdef"
    CREATE_TASKDEFS = "create_taskdefs"
    UPDATE_TASKDEF = "update_taskdef"
    GET_WORKFLOWDEF = "get_workflowdef"
    PUT_WORKFLOWDEFS = "put_workflowdefs"
    START_WORKFLOW = "start_workflow"
    GET_CORRELATED = "get_correlated"
    GET_WORKFLOW = "get_workflow"
    TERMINATE_WORKFLOW = "terminate_workflow"
    RETRY_WORKFLOW = "retry_workflow"
    RESTART_WORKFLOW = "restart_workflow"
    PAUSE_WORKFLOW = "pause_workflow"
    RESUME_WORKFLOW = "resume_workflow"
    POLL_TASK = "poll_task"
    POLL_TASKS = "poll_tasks"
    UPDATE_TASK = "update_task"
    GET_TASK = "get_task"


class FaultKind(StrEnum):
    """A failure as Backtor sees it through `ConductorClient` (tests/contract checks each)."""

    UNAVAILABLE = "unavailable"  # connection refused: ConductorUnavailable, nothing happened
    THROTTLED = "throttled"  # HTTP 429, as 502/503/504: ConductorUnavailable, nothing happened
    SERVER_ERROR = "server_error"  # HTTP 500: ConductorRefused(status=500), nothing happened
    BAD_ANSWER = "bad_answer"  # it happened, but the 2xx answer is garbled: ConductorBadAnswer
    LOST_ANSWER = "lost_answer"  # it happened, the answer never came: ConductorUnavailable
    SLOW = "slow"  # the sleep hook takes `delay` s; past the client's timeout, LOST_ANSWER


# The calls whose answer the client reads (the others ignore the body of a 2xx).
ANSWERED = frozenset(
    {
        Operation.GET_TASKDEF,
        Operation.CREATE_TASKDEFS,
        Operation.UPDATE_TASKDEF,
        Operation.GET_WORKFLOWDEF,
        Operation.PUT_WORKFLOWDEFS,
        Operation.START_WORKFLOW,
        Operation.GET_CORRELATED,
        Operation.GET_WORKFLOW,
        Operation.POLL_TASK,
        Operation.POLL_TASKS,
        Operation.GET_TASK,
    }
)


@dataclass
class _Rule:
    operation: Operation | None  # None: every operation
    kind: FaultKind
    remaining: int | None  # None: a rate rule
    probability: float = 1.0
    delay: float = 0.0

    def applies(self, operation: Operation) -> bool:
        if self.kind is FaultKind.BAD_ANSWER and operation not in ANSWERED | {Operation.HEALTH}:
            return False
        return self.operation in (None, operation)


class Faults:
    """Faults on demand (`inject`) or at a seeded random rate (`set_rate`), per operation."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[_Rule] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.fired: list[tuple[Operation, FaultKind]] = []

    def inject(
        self, operation: Operation | None, kind: FaultKind, count: int = 1, *, delay: float = 0.0
    ) -> None:
        """The next `count` calls of `operation` (None: of any operation) fail this way."""
        self._add(_Rule(operation, kind, count, delay=delay))

    def set_rate(
        self,
        operation: Operation | None,
        kind: FaultKind,
        probability: float,
        *,
        delay: float = 0.0,
    ) -> None:
        """Each call of `operation` fails this way with `probability` (0 removes the rate)."""
        with self._lock:
            self._rules = [
                r
                for r in self._rules
                if r.remaining is not None or (r.operation, r.kind) != (operation, kind)
            ]
        if probability > 0:
            self._add(_Rule(operation, kind, None, probability, delay))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def draw(self, operation: Operation) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.applies(operation):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                elif self._random.random() >= rule.probability:
                    continue
                self.fired.append((operation, rule.kind))
                return rule
            return None

    def _add(self, rule: _Rule) -> None:
        if rule.operation is not None and not rule.applies(rule.operation):
            raise ValueError(f"the client reads no answer of {rule.operation}")
        with self._lock:
            self._rules.append(rule)


class ManualClock:
    """A clock that moves only when told: the simulation's time."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


def _json_copy(value: Any) -> Any:
    """A copy of JSON-shaped data (dicts, lists, scalars), as copy.deepcopy makes it but at a
    fraction of its cost: every task and run the twin hands out is copied."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return copy.deepcopy(value)


@dataclass
class _Task:
    task_id: str
    task_type: str
    reference_name: str
    index: int  # position of its workflow task in the definition
    workflow_id: str
    input: JsonObject
    scheduled_time: datetime
    visible_at: datetime
    order: int
    response_timeout_seconds: int
    status: TaskStatus = TaskStatus.SCHEDULED
    output: JsonObject = field(default_factory=dict)
    retry_count: int = 0
    poll_count: int = 0
    callback_after_seconds: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    worker_id: str | None = None
    reason: str | None = None

    def run(self) -> TaskRun:
        shared = {f.name: getattr(self, f.name) for f in fields(TaskRun)}
        mutable = {"input": _json_copy(self.input), "output": _json_copy(self.output)}
        return TaskRun(**{**shared, **mutable})


@dataclass
class _Workflow:
    workflow_id: str
    definition: JsonObject  # a snapshot taken at start, as the server embeds it
    task_defs: dict[str, Mapping[str, Any]]  # likewise: later edits do not reach this execution
    correlation_id: str | None
    input: JsonObject
    start_time: datetime
    status: WorkflowStatus = WorkflowStatus.RUNNING
    tasks: list[_Task] = field(default_factory=list)
    output: JsonObject = field(default_factory=dict)
    end_time: datetime | None = None
    update_time: datetime | None = None
    reason: str | None = None
    last_retried: datetime | None = None
    variables: JsonObject = field(default_factory=dict)  # SET_VARIABLE's; a restart keeps them

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    def run(self, include_tasks: bool) -> WorkflowRun:
        return WorkflowRun(
            workflow_id=self.workflow_id,
            name=self.name,
            status=self.status,
            version=int(self.definition.get("version", 1)),
            correlation_id=self.correlation_id,
            input=_json_copy(self.input),
            output=_json_copy(self.output),
            start_time=self.start_time,
            end_time=self.end_time,
            update_time=self.update_time,
            reason=self.reason,
            tasks=tuple(t.run() for t in self.tasks) if include_tasks else (),
        )

    @property
    def label(self) -> str:
        """How the server names an execution in its messages."""
        return f"{self.name}.{self.definition.get('version', 1)}/{self.workflow_id}"

    def latest(self, ref: str) -> _Task | None:
        return next((t for t in reversed(self.tasks) if t.reference_name == ref), None)


def _operation(
    operation: Operation,
) -> Callable[
    [Callable[Concatenate[ConductorTwin, P], T]], Callable[Concatenate[ConductorTwin, P], T]
]:
    """One API call: its faults, then the body under the lock, timeouts evaluated first."""

    def wrap(
        method: Callable[Concatenate[ConductorTwin, P], T],
    ) -> Callable[Concatenate[ConductorTwin, P], T]:
        @functools.wraps(method)
        def call(self: ConductorTwin, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return self._call(operation, lambda: method(self, *args, **kwargs))

        return call

    return wrap


class ConductorTwin:
    """Implements `Conductor` and `TaskQueue` in memory; one lock makes it thread-safe."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        sleep: Callable[[float], None] | None = None,
        seed: int = 0,
        client_timeout: float = 10.0,
    ) -> None:
        self._manual: ManualClock | None = None
        if clock is None:
            self._manual = clock = ManualClock()
        self.clock: Clock = clock
        if sleep is None:
            sleep = self._manual.advance if self._manual is not None else _no_sleep
        self._sleep = sleep
        self.faults = Faults(seed)
        self.client_timeout = client_timeout  # ConductorClient's: a slower answer is lost
        self._lock = threading.RLock()
        self._task_defs: dict[str, JsonObject] = {}
        self._workflow_defs: dict[tuple[str, int], JsonObject] = {}
        self._workflows: dict[str, _Workflow] = {}
        self._open: dict[str, _Workflow] = {}
        self._queues: dict[str, list[_Task]] = {}
        self._order = 0

    # -- simulation helpers -----------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the twin's own clock (only when no clock was injected)."""
        if self._manual is None:
            raise TypeError("advance() needs the twin's own clock; move the injected one")
        self._manual.advance(seconds)

    def workflows(self, name: str | None = None) -> list[WorkflowRun]:
        """Every execution (of `name`), with tasks, in start order."""
        with self._lock:
            self._expire(self._now())
            return [w.run(True) for w in self._workflows.values() if name in (None, w.name)]

    def pending_tasks(self, task_types: Iterable[str] | None = None) -> list[TaskRun]:
        """Open (SCHEDULED or IN_PROGRESS) tasks of open workflows, oldest first."""
        wanted = None if task_types is None else frozenset(task_types)
        with self._lock:
            self._expire(self._now())
            tasks = [
                t
                for w in self._open.values()
                for t in w.tasks
                if t.status.is_open and (wanted is None or t.task_type in wanted)
            ]
            return [t.run() for t in sorted(tasks, key=lambda t: t.order)]

    def next_event_at(self) -> datetime | None:
        """The next moment a queued task becomes pollable or a workflow times out."""
        with self._lock:
            now = self._now()
            moments = [t.visible_at for q in self._queues.values() for t in q if t.visible_at > now]
            moments += [m for w in self._open.values() if (m := _timeout_at(w)) is not None]
            return min(moments, default=None)

    # -- Conductor ------------------------------------------------------------------------------

    def is_healthy(self) -> bool:
        try:
            return self._healthy()
        except (ConductorRefused, ConductorUnavailable):
            return False  # the client answers False, never raises

    @_operation(Operation.HEALTH)
    def _healthy(self) -> bool:
        return True

    def close(self) -> None:
        return None

    @_operation(Operation.GET_TASKDEF)
    def get_task_def(self, name: str) -> JsonObject | None:
        found = self._task_defs.get(name)
        return None if found is None else copy.deepcopy(found)

    @_operation(Operation.CREATE_TASKDEFS)
    def create_task_defs(self, definitions: Sequence[Mapping[str, Any]]) -> None:
        checked = [_task_def(d, Operation.CREATE_TASKDEFS) for d in definitions]
        self._task_defs.update((d["name"], d) for d in checked)

    @_operation(Operation.UPDATE_TASKDEF)
    def update_task_def(self, definition: Mapping[str, Any]) -> None:
        checked = _task_def(definition, Operation.UPDATE_TASKDEF)
        if checked["name"] not in self._task_defs:
            raise ConductorNotFound(
                Operation.UPDATE_TASKDEF, 404, f"No such task by name {checked['name']}"
            )
        self._task_defs[checked["name"]] = checked

    @_operation(Operation.GET_WORKFLOWDEF)
    def get_workflow_def(self, name: str, version: int) -> JsonObject | None:
        found = self._workflow_defs.get((name, version))
        return None if found is None else copy.deepcopy(found)

    @_operation(Operation.PUT_WORKFLOWDEFS)
    def put_workflow_defs(self, definitions: Sequence[Mapping[str, Any]]) -> None:
        checked = []
        for d in definitions:
            if not d.get("name") or not d.get("tasks"):
                raise ConductorRefused(Operation.PUT_WORKFLOWDEFS, 400, _VALIDATION)
            _check_modelled(d["tasks"], top_level=True)
            checked.append({**copy.deepcopy(dict(d)), "version": int(d.get("version", 1))})
        self._workflow_defs.update(((d["name"], d["version"]), d) for d in checked)

    @_operation(Operation.START_WORKFLOW)
    def start_workflow(
        self,
        name: str,
        *,
        input: Mapping[str, Any],
        correlation_id: str,
        version: int | None = None,
    ) -> str:
        now = self._now()
        latest = max((v for (n, v) in self._workflow_defs if n == name), default=0)
        definition = self._workflow_defs.get((name, latest if version is None else version))
        if definition is None:
            raise ConductorNotFound(
                Operation.START_WORKFLOW,
                404,
                f"No such workflow defined. name={name}, version={_java(version)}",
            )
        workflow = _Workflow(
            workflow_id=str(uuid.uuid4()),
            # Snapshots without a copy: registered definitions are replaced, never changed in
            # place (put_workflow_defs, create_task_defs and update_task_def store fresh copies).
            definition=definition,
            task_defs={
                t["name"]: self._task_defs.get(t["name"], DEFAULT_TASK_DEF)
                for t in definition["tasks"]
                if t.get("type", SIMPLE) == SIMPLE
            },
            correlation_id=correlation_id or None,
            input=copy.deepcopy(dict(input)),
            start_time=now,
            update_time=now,
            variables=copy.deepcopy(dict(definition.get("variables") or {})),
        )
        self._workflows[workflow.workflow_id] = self._open[workflow.workflow_id] = workflow
        self._advance(workflow, 0, now)
        return workflow.workflow_id

    def workflows_by_correlation(
        self, name: str, correlation_ids: Sequence[str], *, include_closed: bool
    ) -> dict[str, list[WorkflowRun]]:
        """As the server: every id asked is a key; open means RUNNING only (not PAUSED)."""
        return self._correlated(name, correlation_ids, include_closed) if correlation_ids else {}

    @_operation(Operation.GET_CORRELATED)
    def _correlated(
        self, name: str, correlation_ids: Sequence[str], include_closed: bool
    ) -> dict[str, list[WorkflowRun]]:
        found: dict[str, list[WorkflowRun]] = {c: [] for c in correlation_ids}
        for w in (self._workflows if include_closed else self._open).values():
            wanted = include_closed or w.status is WorkflowStatus.RUNNING
            if wanted and w.name == name and w.correlation_id in found:
                found[w.correlation_id].append(w.run(False))
        return found

    @_operation(Operation.GET_WORKFLOW)
    def get_workflow(self, workflow_id: str, *, include_tasks: bool = True) -> WorkflowRun:
        return self._find(workflow_id, Operation.GET_WORKFLOW).run(include_tasks)

    @_operation(Operation.TERMINATE_WORKFLOW)
    def terminate_workflow(self, workflow_id: str, reason: str) -> None:
        workflow = self._find(workflow_id, Operation.TERMINATE_WORKFLOW)
        if workflow.status is WorkflowStatus.COMPLETED:
            raise ConductorRefused(
                Operation.TERMINATE_WORKFLOW, 409, "Cannot terminate a COMPLETED workflow."
            )
        if workflow.status is not WorkflowStatus.TERMINATED:  # a FAILED one becomes TERMINATED
            self._finish(workflow, WorkflowStatus.TERMINATED, reason, self._now())

    @_operation(Operation.RETRY_WORKFLOW)
    def retry_workflow(self, workflow_id: str) -> None:
        now = self._now()
        workflow = self._find(workflow_id, Operation.RETRY_WORKFLOW)
        if workflow.status.is_open:  # a 404 on the real server, odd as it is
            raise ConductorNotFound(
                Operation.RETRY_WORKFLOW,
                404,
                f"Workflow is still running.  status={workflow.status}",
            )
        last = workflow.tasks[-1] if workflow.tasks else None
        if last is None or last.status not in _RETRYABLE:
            raise ConductorRefused(
                Operation.RETRY_WORKFLOW,
                409,
                "There are no retryable tasks! Use restart if you want to attempt entire "
                "workflow execution again.",
            )
        workflow.status, workflow.reason = WorkflowStatus.RUNNING, None  # end_time stays
        workflow.last_retried = workflow.update_time = now
        self._open[workflow.workflow_id] = workflow
        self._enqueue(workflow, last.index, now, last.retry_count + 1, dict(last.input))

    @_operation(Operation.RESTART_WORKFLOW)
    def restart_workflow(self, workflow_id: str) -> None:
        now = self._now()
        workflow = self._find(workflow_id, Operation.RESTART_WORKFLOW)
        if workflow.status.is_open:
            raise ConductorRefused(
                Operation.RESTART_WORKFLOW,
                409,
                f"Workflow: {workflow.label}.{workflow.status} is not in terminal state, "
                "unable to restart.",
            )
        workflow.tasks.clear()  # its variables stay, as on the server
        workflow.status, workflow.reason, workflow.output = WorkflowStatus.RUNNING, None, {}
        workflow.start_time = workflow.update_time = now
        workflow.end_time = workflow.last_retried = None
        self._open[workflow.workflow_id] = workflow
        self._advance(workflow, 0, now)

    @_operation(Operation.PAUSE_WORKFLOW)
    def pause_workflow(self, workflow_id: str) -> None:
        """An operator's pause: queued tasks stay pollable, the next one is not scheduled."""
        workflow = self._find(workflow_id, Operation.PAUSE_WORKFLOW)
        if workflow.status.is_finished:
            raise ConductorRefused(
                Operation.PAUSE_WORKFLOW,
                409,
                f"Workflow {workflow.label} has ended, status cannot be updated.",
            )
        workflow.status = WorkflowStatus.PAUSED

    @_operation(Operation.RESUME_WORKFLOW)
    def resume_workflow(self, workflow_id: str) -> None:
        workflow = self._find(workflow_id, Operation.RESUME_WORKFLOW)
        if workflow.status is not WorkflowStatus.PAUSED:  # a 500 on the real server
            raise ConductorRefused(
                Operation.RESUME_WORKFLOW,
                500,
                f"The workflow {workflow_id} is not PAUSED so cannot resume. "
                f"Current status is {workflow.status}",
            )
        workflow.status = WorkflowStatus.RUNNING
        self._decide(workflow, self._now())

    # -- TaskQueue ------------------------------------------------------------------------------

    @_operation(Operation.POLL_TASK)
    def poll_task(self, task_type: str, worker_id: str) -> TaskRun | None:
        return self._take(task_type, worker_id)

    def _take(self, task_type: str, worker_id: str) -> TaskRun | None:
        now = self._now()
        queue = self._queues.get(task_type, [])
        ready = [t for t in queue if t.visible_at <= now]
        if not ready:
            return None
        task = min(ready, key=lambda t: (t.visible_at, t.order))
        queue.remove(task)
        task.status, task.worker_id, task.update_time = TaskStatus.IN_PROGRESS, worker_id, now
        task.poll_count += 1
        task.callback_after_seconds = 0
        task.start_time = task.start_time or now
        return task.run()

    @_operation(Operation.POLL_TASKS)
    def poll_tasks(
        self, task_type: str, worker_id: str, count: int, wait_ms: int = 0
    ) -> list[TaskRun]:
        """As many polls as `count` allows; the twin never waits (its clock is simulated)."""
        polled = []
        for _ in range(count):
            task = self._take(task_type, worker_id)
            if task is None:
                break
            polled.append(task)
        return polled

    @_operation(Operation.GET_TASK)
    def get_task(self, task_id: str) -> TaskRun:
        for workflow in self._workflows.values():
            for task in workflow.tasks:
                if task.task_id == task_id:
                    return task.run()
        raise ConductorNotFound(Operation.GET_TASK, 404, f"No such task found by id: {task_id}")

    @_operation(Operation.UPDATE_TASK)
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
        now = self._now()
        workflow = self._find(task.workflow_id, Operation.UPDATE_TASK)
        held = next((t for t in workflow.tasks if t.task_id == task.task_id), None)
        if held is None:
            raise ConductorNotFound(
                Operation.UPDATE_TASK, 404, f"No such task found by id: {task.task_id}"
            )
        if not held.status.is_open:
            return  # the server answers 200 and changes nothing
        new = TaskStatus(status)
        if new not in _UPDATES:
            raise NotImplementedError(f"the twin does not model a task update to {status}")
        self._dequeue(held)
        held.output = copy.deepcopy(dict(output or {}))
        held.worker_id, held.update_time = worker_id or None, now
        if new is TaskStatus.IN_PROGRESS:  # shown as SCHEDULED until polled again
            held.status, held.callback_after_seconds = TaskStatus.SCHEDULED, callback_after_seconds
            held.visible_at = now + timedelta(seconds=callback_after_seconds)
            self._queues.setdefault(held.task_type, []).append(held)
            return
        held.status, held.end_time = new, now
        held.reason = reason if reason is not None else held.reason
        if new is TaskStatus.COMPLETED:
            self._decide(workflow, now)
        else:
            self._failed(workflow, held, now)

    # -- the model ------------------------------------------------------------------------------

    def _call(self, operation: Operation, action: Callable[[], T]) -> T:
        """Faults first (the sleep hook outside the lock), then the call under the lock."""
        rule = self.faults.draw(operation)
        kind = None if rule is None else rule.kind
        if rule is not None and kind is FaultKind.SLOW:
            self._sleep(min(rule.delay, self.client_timeout))
            kind = FaultKind.LOST_ANSWER if rule.delay >= self.client_timeout else None
        if kind in (FaultKind.UNAVAILABLE, FaultKind.THROTTLED, FaultKind.SERVER_ERROR):
            raise _fault_error(operation, kind)
        with self._lock:
            self._expire(self._now())
            result = action()
        if kind is not None:
            raise _fault_error(operation, kind)
        return result

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the twin's clock must return an aware datetime")
        now = now.astimezone(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)  # the server's ms

    def _find(self, workflow_id: str, operation: Operation) -> _Workflow:
        workflow = self._workflows.get(workflow_id)
        if workflow is None:
            raise ConductorNotFound(operation, 404, f"No such workflow found by id: {workflow_id}")
        return workflow

    def _advance(self, workflow: _Workflow, index: int, now: datetime) -> None:
        """From the top-level task at `index`: run system tasks until a SIMPLE one is queued,
        the workflow ends (TERMINATE), or the sequence does (the workflow completes)."""
        tasks = workflow.definition["tasks"]
        while index < len(tasks):
            spec = tasks[index]
            if spec.get("type", SIMPLE) == SIMPLE:
                task_input = _resolve(spec.get("inputParameters", {}), workflow)
                self._enqueue(workflow, index, now, 0, task_input)
                return
            if not self._run_system(workflow, spec, index, now):
                return
            index += 1
        self._finish(workflow, WorkflowStatus.COMPLETED, None, now)

    def _run_system(
        self, workflow: _Workflow, spec: Mapping[str, Any], index: int, now: datetime
    ) -> bool:
        """One system task (a SWITCH with its branch), COMPLETED; False if the workflow ended."""
        kind = spec["type"]
        task_input = _resolve(spec.get("inputParameters", {}), workflow)
        self._order += 1
        task = _Task(
            task_id=str(uuid.uuid4()),
            task_type=kind,
            reference_name=spec["taskReferenceName"],
            index=index,
            workflow_id=workflow.workflow_id,
            input=task_input,
            scheduled_time=now,
            visible_at=now,
            order=self._order,
            response_timeout_seconds=0,
            status=TaskStatus.COMPLETED,
            start_time=now,
            end_time=now,
            update_time=now,
        )
        workflow.tasks.append(task)
        workflow.update_time = now
        if kind == "SET_VARIABLE":
            workflow.variables.update(copy.deepcopy(task_input))
        elif kind == "JSON_JQ_TRANSFORM":
            result = JQ_PROGRAMS[task_input["queryExpression"]](task_input)
            task.output = {"result": result, "resultList": [copy.deepcopy(result)]}
        elif kind == "SWITCH":
            case = _java(task_input.get(spec["expression"]))
            task.output = {"evaluationResult": [case], "selectedCase": case}
            branch = (spec.get("decisionCases") or {}).get(case) or spec.get("defaultCase") or []
            return all(self._run_system(workflow, inner, index, now) for inner in branch)
        elif kind == "TERMINATE":
            status = _TERMINATION[task_input["terminationStatus"]]
            given = task_input.get("workflowOutput")
            task.output = (
                dict(given)
                if isinstance(given, Mapping)
                else ({} if given is None else {"output": given})
            )
            reason = task_input.get("terminationReason") or (
                f"Workflow is {status} by TERMINATE task: {task.task_id}"
            )
            output = copy.deepcopy(task.output)
            if status is WorkflowStatus.COMPLETED:  # completed, and the reason still set
                self._finish(workflow, status, None, now, output=output)
                workflow.reason = reason
            else:
                self._finish(workflow, status, reason, now, output=output)
            return False
        return True

    def _enqueue(
        self,
        workflow: _Workflow,
        index: int,
        now: datetime,
        retry_count: int,
        task_input: JsonObject,
        *,
        delay: int = 0,
        reason: str | None = None,
    ) -> None:
        spec = workflow.definition["tasks"][index]
        task_def = workflow.task_defs[spec["name"]]
        self._order += 1
        task = _Task(
            task_id=str(uuid.uuid4()),
            task_type=spec["name"],
            reference_name=spec["taskReferenceName"],
            index=index,
            workflow_id=workflow.workflow_id,
            input=task_input,
            scheduled_time=now,
            visible_at=now + timedelta(seconds=delay),
            order=self._order,
            response_timeout_seconds=int(task_def.get("responseTimeoutSeconds", 3600)),
            retry_count=retry_count,
            callback_after_seconds=delay,
            reason=reason,
        )
        workflow.tasks.append(task)
        workflow.update_time = now
        self._queues.setdefault(task.task_type, []).append(task)

    def _dequeue(self, task: _Task) -> None:
        queue = self._queues.get(task.task_type, [])
        if task in queue:
            queue.remove(task)

    def _decide(self, workflow: _Workflow, now: datetime) -> None:
        """After a task completed: schedule the next one, or complete the workflow."""
        if workflow.status is not WorkflowStatus.RUNNING or not workflow.tasks:
            return
        last = workflow.tasks[-1]
        if last.status is not TaskStatus.COMPLETED:
            return
        self._advance(workflow, last.index + 1, now)

    def _failed(self, workflow: _Workflow, task: _Task, now: datetime) -> None:
        task_def = workflow.task_defs[task.task_type]
        if task.status is TaskStatus.FAILED and task.retry_count < int(task_def["retryCount"]):
            self._enqueue(
                workflow,
                task.index,
                now,
                task.retry_count + 1,
                dict(task.input),
                delay=_retry_delay(task_def, task.retry_count),
                reason=task.reason,  # the server copies it onto the retry
            )
            return
        why = f"Task {task.task_id} failed with status: FAILED and reason: '{_java(task.reason)}'"
        self._finish(workflow, WorkflowStatus.FAILED, why, now)

    def _finish(
        self,
        workflow: _Workflow,
        status: WorkflowStatus,
        reason: str | None,
        now: datetime,
        *,
        output: JsonObject | None = None,  # a TERMINATE task's: instead of outputParameters
    ) -> None:
        for task in workflow.tasks:
            if task.status.is_open:
                self._dequeue(task)
                task.status, task.end_time = TaskStatus.CANCELED, now
        workflow.status, workflow.reason = status, reason
        workflow.end_time = workflow.update_time = now
        workflow.output = (
            output
            if output is not None
            else _resolve(workflow.definition.get("outputParameters", {}), workflow)
        )
        self._open.pop(workflow.workflow_id, None)

    def _expire(self, now: datetime) -> None:
        """Workflow timeouts (TIME_OUT_WF), evaluated lazily at each call."""
        for workflow in list(self._open.values()):
            deadline = _timeout_at(workflow)
            if deadline is None or now < deadline:
                continue
            base = workflow.last_retried or workflow.start_time
            configured = int(workflow.definition["timeoutSeconds"])
            why = (
                f"Workflow timed out after {int((now - base).total_seconds())} seconds. "
                f"Timeout configured as {configured} seconds. "
                "Timeout policy configured to TIME_OUT_WF"
            )
            self._finish(workflow, WorkflowStatus.TIMED_OUT, why, now)


def _start_fence(given: Mapping[str, Any]) -> JsonObject:
    """START_FENCE_QUERY in Python: a start received after its startBy is late, unless this
    run was admitted before (a restart of it keeps its variables); no startBy, no fence."""
    admitted, received, start_by = given.get("admittedAt"), given["receivedAt"], given["startBy"]
    if admitted is not None:
        return {"verdict": "readmitted", "admittedAt": admitted}
    if start_by is None:
        return {"verdict": "unfenced", "admittedAt": received}
    if received > _jq_number(start_by):
        return {"verdict": "late", "admittedAt": None}
    return {"verdict": "admitted", "admittedAt": received}


def _jq_number(value: Any) -> float:
    """jq's `tonumber`: a number as it is, a string parsed."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise NotImplementedError(f"the twin does not model jq failing on tonumber({value!r})")
    try:
        return float(value)
    except ValueError:
        raise NotImplementedError(f"the twin does not model jq failing on {value!r}") from None


# The jq programs the twin runs, by their exact text: each one's Python equivalent.
JQ_PROGRAMS: Mapping[str, Callable[[Mapping[str, Any]], Any]] = {
    START_FENCE_QUERY: _start_fence,
}
_SYSTEM_TASKS = frozenset({"NOOP", "SET_VARIABLE", "SWITCH", "TERMINATE", "JSON_JQ_TRANSFORM"})


def _check_modelled(tasks: Sequence[Mapping[str, Any]], *, top_level: bool) -> None:
    """Refuse, at registration, a workflow the twin would run differently from the server."""
    for spec in tasks:
        kind = spec.get("type", SIMPLE)
        if kind == SIMPLE and top_level:
            continue
        if kind not in _SYSTEM_TASKS:
            where = "at the top level" if kind == SIMPLE else "of this type"
            raise NotImplementedError(f"the twin does not model task {spec.get('name')} {where}")
        given = spec.get("inputParameters") or {}
        if kind == "JSON_JQ_TRANSFORM" and given.get("queryExpression") not in JQ_PROGRAMS:
            raise NotImplementedError(f"the twin does not model the jq of {spec.get('name')}")
        if kind == "TERMINATE" and given.get("terminationStatus") not in _TERMINATION:
            raise NotImplementedError("the twin models a literal terminationStatus only")
        if kind == "SWITCH":
            if spec.get("evaluatorType") != "value-param" or not spec.get("expression"):
                raise NotImplementedError("the twin models SWITCH with value-param only")
            for branch in [*(spec.get("decisionCases") or {}).values(), spec.get("defaultCase")]:
                _check_modelled(branch or [], top_level=False)


def _no_sleep(seconds: float) -> None:
    """An injected clock the twin cannot move: slowness then costs no simulated time."""


def _timeout_at(workflow: _Workflow) -> datetime | None:
    seconds = int(workflow.definition.get("timeoutSeconds") or 0)
    if workflow.status is not WorkflowStatus.RUNNING or seconds <= 0:
        return None
    if workflow.definition.get("timeoutPolicy", "TIME_OUT_WF") != "TIME_OUT_WF":
        return None
    return (workflow.last_retried or workflow.start_time) + timedelta(seconds=seconds)


def _retry_delay(task_def: Mapping[str, Any], failed_retry_count: int) -> int:
    delay = int(task_def.get("retryDelaySeconds", 60))
    if task_def.get("retryLogic", "FIXED") == "EXPONENTIAL_BACKOFF":
        return int(delay * 2**failed_retry_count)
    return delay


def _task_def(definition: Mapping[str, Any], where: Operation) -> JsonObject:
    """The server's defaults and the validation rules Backtor can run into."""
    checked = {**DEFAULT_TASK_DEF, **copy.deepcopy(dict(definition))}
    if not checked.get("name"):
        raise ConductorRefused(where, 400, _VALIDATION)
    timeout, response = int(checked["timeoutSeconds"]), int(checked["responseTimeoutSeconds"])
    if timeout > 0 and response > timeout:
        raise ConductorRefused(where, 400, _VALIDATION)
    if checked["retryLogic"] not in _MODELLED_RETRY_LOGIC:
        raise NotImplementedError(f"the twin does not model retryLogic {checked['retryLogic']}")
    return checked


def _fault_error(operation: Operation, kind: FaultKind) -> Exception:
    """Exactly what ConductorClient raises for that failure (tests/contract/test_http_client.py)."""
    if kind is FaultKind.SERVER_ERROR:
        return ConductorRefused(operation, 500, "Internal Server Error (injected)")
    if kind is FaultKind.BAD_ANSWER:
        return ConductorBadAnswer(operation, "injected")
    why = {
        FaultKind.UNAVAILABLE: "Connection refused",
        FaultKind.THROTTLED: "HTTP 429 Too Many Requests",
    }.get(kind, "Read timed out")
    return ConductorUnavailable(f"Conductor {operation}: {why} (injected)")


def _resolve(value: Any, workflow: _Workflow) -> Any:
    """Conductor's ${...} input expressions: a whole-string one keeps its value's type."""
    if isinstance(value, Mapping):
        return {k: _resolve(v, workflow) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, workflow) for v in value]
    if not isinstance(value, str):
        return value
    whole = _EXPRESSION.fullmatch(value)
    if whole:
        return copy.deepcopy(_lookup(whole.group(1), workflow))
    return _EXPRESSION.sub(lambda m: _java(_lookup(m.group(1), workflow)), value)


_WORKFLOW_FIELDS: dict[str, Callable[[_Workflow], Any]] = {
    "workflowId": lambda w: w.workflow_id,
    "correlationId": lambda w: w.correlation_id,
    "workflowType": lambda w: w.name,
}
_TASK_FIELDS: dict[str, Callable[[_Task], Any]] = {
    "taskId": lambda t: t.task_id,
    "status": lambda t: str(t.status),
    "retryCount": lambda t: t.retry_count,
    "pollCount": lambda t: t.poll_count,
    "workerId": lambda t: t.worker_id,
    "referenceTaskName": lambda t: t.reference_name,
    "startTime": lambda t: to_epoch_ms(t.start_time),
    "endTime": lambda t: to_epoch_ms(t.end_time),
    "scheduledTime": lambda t: to_epoch_ms(t.scheduled_time),
}


def _lookup(path: str, workflow: _Workflow) -> Any:
    head, *rest = path.strip().split(".")
    if head == "workflow":
        if not rest:
            return None
        if rest[0] in ("input", "variables"):
            return _dig(workflow.input if rest[0] == "input" else workflow.variables, rest[1:])
        field_of = _WORKFLOW_FIELDS.get(rest[0])
        return field_of(workflow) if field_of and len(rest) == 1 else None
    task = workflow.latest(head)
    if task is None or not rest:
        return None
    if rest[0] in ("input", "output"):
        return _dig(task.input if rest[0] == "input" else task.output, rest[1:])
    getter = _TASK_FIELDS.get(rest[0])
    return getter(task) if getter and len(rest) == 1 else None


def _dig(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _java(value: Any) -> str:
    """A value as the server's Java writes it into a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


if TYPE_CHECKING:

    def _implements(twin: ConductorTwin) -> tuple[Conductor, TaskQueue]:
        """mypy checks here that the twin satisfies both Protocols."""
        return twin, twin
