"""Small network helpers for tests."""

from __future__ import annotations

import os
import random
import socket
import time

import requests


def free_port() -> int:
    """A TCP port that is free on loopback right now.

    With BACKTOR_TEST_PORTS=LOW-HIGH, one from that range: scripts/test gives each of its
    concurrent pytest processes a range of its own, so a port one chose for a server still
    starting (a Conductor binds it 20 s later) is never chosen by the other.
    """
    bounds = _port_range(os.environ.get("BACKTOR_TEST_PORTS", ""))
    if bounds is None:
        return _bind(0)
    low, high = bounds
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for port in candidates:
        try:
            return _bind(port)
        except OSError:
            continue
    raise RuntimeError(f"BACKTOR_TEST_PORTS={low}-{high}: no port in the range is free")


def _bind(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        return int(sock.getsockname()[1])


def _port_range(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    low, sep, high = text.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) < 65536):
        raise ValueError(f"BACKTOR_TEST_PORTS={text!r}: expected LOW-HIGH, e.g. 20000-24999")
    return int(low), int(high)


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
