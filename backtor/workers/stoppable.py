"""A conductor-python Worker that stops polling once its runner process is told to stop."""

import os
from typing import Any

from conductor.client.worker.worker import Worker

from backtor.observability.logs import configure_logging
from backtor.runtime.settings import Settings
from backtor.workers import process


class StoppableWorker(Worker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._built_in_pid = os.getpid()
        super().__init__(*args, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled in a freshly spawned runner, in its main thread (before the runner
        # starts polling): the one place to take over the runner's SIGTERM.
        super().__setstate__(state)
        if os.getpid() != state.get("_built_in_pid"):
            process.install_graceful_stop()
            # Backtor's log format (LOG_FORMAT) before the SDK's first line in this runner.
            settings = Settings.from_env()
            configure_logging(settings.log_level, settings.log_format)

    @property
    def paused(self) -> bool:
        return process.stopping() or bool(getattr(self, "_paused_by_config", False))

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused_by_config = value
