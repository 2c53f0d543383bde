"""A notification receiver for the tests: a local HTTP server (tests.support.http_server)
recording each POST.

It answers `status` (204 by default), once `hold` is set when one is given (a receiver that
does not answer in time); `received` lists what came, in order. A receiver that is down is
a closed port: `closed_url()`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from backtor.core.notices import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.support.http_server import LocalHttpServer
from tests.support.net import free_port


@dataclass(frozen=True)
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def event(self) -> str:
        return str(self.payload["event"])

    def verified(self, secret: str) -> bool:
        """What a receiver does before it trusts the body (docs/notifications.md)."""
        signature = self.headers.get(SIGNATURE_HEADER)
        timestamp = self.headers.get(TIMESTAMP_HEADER)
        if signature is None or timestamp is None:
            return False
        return verify(self.body, secret, int(timestamp), signature)


class Receiver(LocalHttpServer):
    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.hold: threading.Event | None = None
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                with receiver._lock:
                    receiver.received.append(
                        Received(parts.path, parts.query, dict(self.headers.items()), body)
                    )
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "0")
                    if 300 <= receiver.status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: object) -> None:
                return None

        super().__init__(Handler)

    def url(self, path: str = "/hook", query: str = "") -> str:
        return f"{self.base}{path}{'?' + query if query else ''}"

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def events(self, spec: str | None = None) -> list[Received]:
        """What came, for `spec` only when given."""
        return [r for r in self.all() if spec is None or r.payload.get("spec") == spec]


def closed_url(path: str = "/hook", query: str = "") -> str:
    """A receiver that is down: nothing listens on the port."""
    return f"http://127.0.0.1:{free_port()}{path}{'?' + query if query else ''}"
