"""Backtor's API served by uvicorn in a thread, on a socket bound before it starts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from backtor.api.app import create_app
from backtor.runtime.settings import Settings
from tests.support.waiting import wait_until
from tests.ui.seed import Clock


@contextmanager
def serve(settings: Settings, clock: Clock) -> Iterator[str]:
    """Serve the app on a free loopback port until the block ends; yields its base URL.

    The socket is bound here (port 0: the system picks a free one), so no other process
    can take the port between choosing and serving. Ready means uvicorn says it started.
    """
    app = create_app(settings, clock=clock)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported when the block ends
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_until(
        lambda: server.started or not thread.is_alive(), timeout=60, interval=0.02, what="uvicorn"
    )
    assert server.started, f"the API did not start: {errors}"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
        if errors:
            raise errors[0]
