"""The worker's probes: a tiny HTTP server on BACKTOR_WORKER_HEALTH_PORT (default 6001).

Host and port come from Settings (`worker_health_host`, `worker_health_port`); 0 is no server.

`GET /health`: the process lives (200). `GET /ready`: 200 when the worker does its job:
definitions registered, every task type's runner alive (its poller thread, or its runner
process under process isolation), Conductor's health endpoint
answering, and the scheduler watchdog having completed a pass recently; 503 otherwise,
with the failing checks in the JSON body. The answers come from state the worker's main
loop and a background checker keep up to date, so a probe never waits on the network.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger(__name__)

CONDUCTOR_CHECK_SECONDS = 5.0


class TaskRunners(Protocol):
    """What readiness needs from the runners: conductor-python's TaskHandler, or ThreadTasks."""

    def is_healthy(self) -> bool: ...

    def get_worker_process_status(self) -> list[dict[str, Any]]: ...


class WorkerHealth:
    """What the worker reports about itself; written by its main loop, read by the probes."""

    def __init__(
        self,
        conductor_healthy: Callable[[], bool],
        *,
        watchdog_every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conductor_healthy = conductor_healthy
        self._clock = clock
        self.watchdog_stale_after = 3 * watchdog_every + 5
        self.registered = False
        self.runners: TaskRunners | None = None
        self._watchdog_ok_at: float | None = None
        self._conductor: tuple[float, bool] | None = None
        self._stop = threading.Event()

    def watchdog_ran(self) -> None:
        self._watchdog_ok_at = self._clock()

    def check_conductor(self) -> None:
        self._conductor = (self._clock(), bool(self._conductor_healthy()))

    def keep_checking_conductor(self, every: float = CONDUCTOR_CHECK_SECONDS) -> None:
        """Check Conductor in a daemon thread until `stop()`."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.check_conductor()
                except Exception as exc:  # a probe must never die of one failure
                    log.debug("worker health: Conductor check failed: %s", exc)
                    self._conductor = (self._clock(), False)
                self._stop.wait(every)

        threading.Thread(target=loop, name="backtor-health-conductor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): each check true or false, and each task type's runner."""
        now = self._clock()
        runners = self.runners
        conductor_fresh = (
            self._conductor is not None
            and self._conductor[1]
            and now - self._conductor[0] <= 3 * CONDUCTOR_CHECK_SECONDS + 5
        )
        checks = {
            "registered": self.registered,
            "runners": runners is not None and runners.is_healthy(),
            "conductor": bool(conductor_fresh),
            "watchdog": self._watchdog_ok_at is not None
            and now - self._watchdog_ok_at <= self.watchdog_stale_after,
        }
        details: dict[str, Any] = {"checks": checks}
        if runners is not None:
            details["runners"] = [
                {
                    "task": s.get("worker"),
                    "alive": s.get("alive"),
                    "restarts": s.get("restart_count"),
                }
                for s in runners.get_worker_process_status()
            ]
        return all(checks.values()), details


class HealthServer:
    """Serves WorkerHealth over HTTP in a daemon thread."""

    def __init__(self, health: WorkerHealth, host: str, port: int) -> None:
        handler = _handler_for(health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="backtor-health", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_health_server(health: WorkerHealth, host: str, port: int) -> HealthServer | None:
    """The probe server on `host`:`port`, or None (port 0 turns it off, or the port is taken)."""
    if port == 0:
        return None
    try:
        server = HealthServer(health, host, port).start()
    except OSError as exc:
        # One box, several workers: the first one serves the probes; the rest keep working.
        log.warning("worker probes not served: cannot listen on %s:%d (%s)", host, port, exc)
        return None
    log.info("worker probes on http://%s:%d/health and /ready", host, server.port)
    return server


def _handler_for(health: WorkerHealth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._answer(200, {"status": "ok"})
            elif path == "/ready":
                ready, details = health.readiness()
                self._answer(
                    200 if ready else 503, {"status": "ready" if ready else "not ready"} | details
                )
            else:
                self._answer(404, {"message": f"no such path: {path}"})

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # a probe every few seconds is not news

    return Handler
