"""`backtor api` as a real process: concurrent creates, and what it writes to its log."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port

pytestmark = pytest.mark.integration

SECRET = "worker-secret-\u2603-do-not-log"
CLIENTS = 50


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """`backtor api` on a free port, migrating at start (BACKTOR_MIGRATE_ON_START=1)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "BACKTOR_MIGRATE_ON_START": "1",
        "CONDUCTOR_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "LOG_LEVEL": "debug",
    }
    env.pop("BACKTOR_API_TOKEN", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backtor",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    running = Server(base_url, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, running.log_text()
            try:
                if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, running.log_text()
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_fifty_concurrent_creates_of_one_name_make_exactly_one(server: Server) -> None:
    barrier = threading.Barrier(CLIENTS)

    def create(_: int) -> int:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            barrier.wait()
            answer = client.post("/backup", json={"name": "contended", "workerConfig": SECRET})
            assert set(answer.json()) >= {"name"} or set(answer.json()) == {"message", "field"}
            return answer.status_code

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        statuses = Counter(pool.map(create, range(CLIENTS)))
    assert statuses == Counter({201: 1, 409: CLIENTS - 1}), statuses

    listed = httpx.get(f"{server.base_url}/backup", timeout=10).json()
    assert [s["name"] for s in listed] == ["contended"]
    assert listed[0]["workerConfig"] == SECRET


def test_the_log_holds_no_secrets(server: Server, database_url: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert (
            client.post("/backup", json={"name": "db1", "workerConfig": SECRET}).status_code == 201
        )
        bad = client.post(
            "/backup", json={"name": "db2", "workerConfig": SECRET, "timeoutSeconds": 0}
        )
        assert bad.status_code == 422
        assert (
            client.post("/backup", json={"name": "db1", "workerConfig": SECRET}).status_code == 409
        )
        assert client.post("/backup/db1/materialized").status_code == 503  # Conductor is down
        assert client.put("/backup/db1", json={"workerConfig": SECRET + "2"}).status_code == 200
    server.process.terminate()
    server.process.wait(timeout=20)
    text = server.log_text()
    assert "serving the API" in text
    assert "BACKTOR_API_TOKEN is not set" in text
    assert SECRET not in text
    assert "do-not-log" not in text
    if database_url.startswith("postgresql"):
        assert ":backtor@" not in text  # the DATABASE_URL password is masked
        assert "***" in text
