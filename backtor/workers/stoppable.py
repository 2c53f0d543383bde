"""A conductor-python Worker that stops polling once its runner process is told to stop."""

import multiprocessing

from conductor.client.worker.worker import Worker

from backtor.workers import context

# Unpickled in each spawned runner's main thread: the place to take over its SIGTERM.
if multiprocessing.parent_process() is not None:
    context.install_graceful_stop()


class StoppableWorker(Worker):  # type: ignore[misc]
    @property
    def paused(self) -> bool:
        return context.stopping() or bool(getattr(self, "_paused_by_config", False))

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused_by_config = value
