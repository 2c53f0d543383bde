"""Small network helpers for tests."""

from __future__ import annotations

import socket
import time

import requests


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(base_url: str, timeout: float) -> None:
    """Wait for Conductor's GET /health to say healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/health", timeout=2).json().get("healthy"):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url}/health did not answer healthy within {timeout} s")
