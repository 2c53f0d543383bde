"""A local HTTP server for the tests: http.server on a free loopback port, served from a
thread while `running()`. The notification receiver (tests.support.receiver) and the
scripted Conductor stand-in (tests.contract.stub) are both one, with their own handler.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LocalHttpServer:
    """Bound at construction (port 0: the system picks a free one, so `base` is known
    before it serves); each request is handled in a daemon thread of its own."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[Self]:
        """Serve until the block ends, then shut down and close the socket."""
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)
