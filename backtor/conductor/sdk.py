"""conductor-python behind one module: its polled `Task` in, Backtor's typed records out.

Task handlers take a `TaskRun` and return a `TaskOutcome`, so the simulation can call them
with the twin's tasks; only this module knows the SDK's classes.
"""

# No `from __future__ import annotations`: conductor-python reads the `Task` annotation of
# the execute function at run time to decide whether to pass the whole task.

import os
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from conductor.client.worker.worker import Worker

from backtor.conductor.auth import (
    DEFAULT_REFRESH_MINUTES,
    FROM_ENVIRONMENT,
    AuthChoice,
    ConductorAuth,
    resolve,
    verify,
)
from backtor.conductor.payloads import TaskRun, TaskStatus, from_epoch_ms
from backtor.conductor.results import TaskOutcome

Handler = Callable[[TaskRun], TaskOutcome]


def task_run(task: Task) -> TaskRun:
    """The SDK's Task as Backtor's TaskRun."""
    try:
        status = TaskStatus(str(task.status))
    except ValueError:
        status = TaskStatus.IN_PROGRESS  # a polled task is in progress by definition
    return TaskRun(
        task_id=str(task.task_id),
        task_type=str(task.task_type or task.task_def_name or ""),
        reference_name=str(task.reference_task_name or ""),
        status=status,
        workflow_id=str(task.workflow_instance_id or ""),
        input=MappingProxyType(dict(task.input_data or {})),
        output=MappingProxyType(dict(task.output_data or {})),
        start_time=from_epoch_ms(task.start_time),
        end_time=from_epoch_ms(task.end_time),
        update_time=from_epoch_ms(task.update_time),
        scheduled_time=from_epoch_ms(task.scheduled_time),
        retry_count=int(task.retry_count or 0),
        poll_count=int(task.poll_count or 0),
        callback_after_seconds=int(task.callback_after_seconds or 0),
        response_timeout_seconds=int(task.response_timeout_seconds or 0),
        worker_id=task.worker_id,
    )


def task_result(task: Task, outcome: TaskOutcome) -> TaskResult:
    result = TaskResult(
        task_id=task.task_id,
        workflow_instance_id=task.workflow_instance_id,
        status=TaskResultStatus(outcome.status),
        output_data=dict(outcome.output),
    )
    if outcome.reason is not None:
        result.reason_for_incompletion = outcome.reason
    if outcome.status == "IN_PROGRESS":
        result.callback_after_seconds = outcome.callback_after_seconds
    return result


class SdkTask:
    """A handler as conductor-python's execute function (picklable: runners are spawned)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, task: Task) -> TaskResult:
        return task_result(task, self.handler(task_run(task)))


class BacktorConfiguration(Configuration):  # type: ignore[misc]
    """conductor-python's Configuration that also carries static headers, in every process.

    Pickled into each spawned runner; unpickling installs the headers there before the
    runner builds its ApiClient.
    """

    def __init__(self, *, static_headers: dict[str, str], **options: Any) -> None:
        self.static_headers = dict(static_headers)
        super().__init__(**options)
        if self.static_headers:
            _install_static_headers()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.static_headers:
            _install_static_headers()

    def __repr__(self) -> str:
        return f"BacktorConfiguration({self.host!r})"


def _install_static_headers() -> None:
    """Make conductor-python's ApiClient add its configuration's `static_headers`.

    The SDK has no setting for extra headers (its TaskRunner builds the ApiClient), so its
    default headers are extended where they are made, before the client's first request
    (the token exchange). Only a BacktorConfiguration has `static_headers`; any other
    ApiClient is left as it was. Idempotent, once per process.
    """
    from conductor.client.http.api_client import ApiClient

    if getattr(ApiClient, "_backtor_static_headers", False):
        return
    made = "_ApiClient__get_default_headers"
    original = getattr(ApiClient, made, None)
    if original is None:  # a conductor-python that builds its headers elsewhere
        raise RuntimeError(
            "conductor-python's ApiClient changed: cannot send CONDUCTOR_AUTH_HEADER"
        )

    def default_headers(self: Any, header_name: Any, header_value: Any) -> dict[str, Any]:
        headers: dict[str, Any] = original(self, header_name, header_value)
        headers.update(getattr(self.configuration, "static_headers", None) or {})
        return headers

    setattr(ApiClient, made, default_headers)
    ApiClient._backtor_static_headers = True


class StoppableWorker(Worker):  # type: ignore[misc]
    """A Worker that stops polling once its runner process is told to stop.

    `stopping` and `on_spawn` are module-level functions (they are pickled into the runner);
    `on_spawn` runs in the freshly spawned runner's main thread, before it polls.
    """

    def __init__(
        self,
        task_type: str,
        handler: Handler,
        *,
        stopping: Callable[[], bool],
        on_spawn: Callable[[], None],
        poll_interval: int,
        thread_count: int = 1,
        **options: Any,
    ) -> None:
        self._built_in_pid = os.getpid()
        self._stopping = stopping
        self._on_spawn = on_spawn
        super().__init__(
            task_type,
            SdkTask(handler),
            poll_interval=poll_interval,
            thread_count=thread_count,
            **options,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if os.getpid() != state.get("_built_in_pid"):
            self._on_spawn()

    @property
    def paused(self) -> bool:
        return self._stopping() or bool(getattr(self, "_paused_by_config", False))

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused_by_config = value


def task_handler(
    conductor_api_url: str,
    workers: list[StoppableWorker],
    *,
    auth: AuthChoice = FROM_ENVIRONMENT,
) -> Any:
    """conductor-python's TaskHandler for these workers: one runner process each.

    `auth`: Conductor's credentials (default: the environment's, as Settings reads them).
    They are checked here, once: a refused key, secret or header stops the process now with
    ConductorAuthRejected, where the SDK alone would log and back off for ever.
    """
    credentials = resolve(auth)
    if workers:
        probe = f"/metadata/taskdefs/{workers[0].get_task_definition_name()}"
        verify(conductor_api_url, credentials, probe)
    # Imported here: importing the automator switches multiprocessing to "spawn".
    from conductor.client.automator.task_handler import TaskHandler

    return TaskHandler(
        workers=workers,
        configuration=configuration(conductor_api_url, credentials),
        scan_for_annotated_workers=False,
    )


def configuration(conductor_api_url: str, auth: ConductorAuth | None) -> Any:
    """conductor-python's Configuration with Backtor's credentials, nothing from elsewhere.

    The SDK exchanges the key and secret at `/token` itself (AuthenticationSettings), sends
    the token as X-Authorization, fetches a new one every `refresh_minutes` and after a
    401 or 403 whose body says EXPIRED_TOKEN or INVALID_TOKEN (Orkes' answers). A static
    header rides on every request of the SDK's ApiClient (`_install_static_headers`).
    """
    from conductor.client.configuration.settings.authentication_settings import (
        AuthenticationSettings,
    )

    settings = None
    if auth is not None and auth.key_id is not None and auth.key_secret is not None:
        settings = AuthenticationSettings(key_id=auth.key_id, key_secret=auth.key_secret)
    config = BacktorConfiguration(
        server_api_url=conductor_api_url,
        authentication_settings=settings,
        auth_token_ttl_min=auth.refresh_minutes if auth is not None else DEFAULT_REFRESH_MINUTES,
        static_headers=auth.static_headers() if auth is not None else {},
    )
    # Without settings the SDK reads CONDUCTOR_AUTH_KEY/SECRET itself: Backtor's word holds.
    config.authentication_settings = settings
    return config
