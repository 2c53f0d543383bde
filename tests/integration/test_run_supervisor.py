"""`backtor run` when its worker refuses to start: one clear stop, not a restart loop.

A worker exits with status 2 when Conductor refuses its credentials (or a setting is bad);
starting it again cannot help. The Conductor here is a stand-in that answers every request
with 401, as a secured cluster answers a process without credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.processes import BACKTOR


class _Refusing(BaseHTTPRequestHandler):
    """Every request: 401, as a secured Conductor answers one without a token."""

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"message": "missing token"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing_conductor() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_run_stops_with_status_2_when_the_worker_refuses_to_start(
    refusing_conductor: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKTOR_API_TOKEN")}
    env.update(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "CONDUCTOR_API_URL": refusing_conductor,
            "BACKTOR_WORKER_HEALTH_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    done = subprocess.run(
        [BACKTOR, "run", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a restart loop would never end: this bounds it
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    # The worker said why, once: it was started once, not again and again.
    assert said.count("backtor worker: Conductor requires authentication") == 1, said
    assert "set CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET, or CONDUCTOR_AUTH_HEADER" in said
    assert "backtor worker refused to start (status 2" in said
    assert "not restarting it" in said
    # `run` returns only once both children ended: the API was stopped with the worker.
    assert said.count("from an empty schema") == 1, said  # migrated once, by `run` itself
