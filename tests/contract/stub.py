"""A tiny local HTTP server (tests.support.http_server) that answers every request the
same scripted way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.support.http_server import LocalHttpServer


@dataclass
class Answer:
    status: int = 200
    body: str = ""
    delay: float = 0.0
    content_type: str = "application/json"


class StubServer(LocalHttpServer):
    def __init__(self) -> None:
        self.answer = Answer()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                answer = stub.answer
                if answer.delay:
                    time.sleep(answer.delay)
                body = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                return None

        super().__init__(Handler)
        self.url = f"{self.base}/api"
