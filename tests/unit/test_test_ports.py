"""The tests' port picker: scripts/test runs two pytest processes at once, each with a range
of its own (BACKTOR_TEST_PORTS), so neither picks a port the other chose for a server still
starting."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.net import free_port


def test_without_a_range_the_system_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKTOR_TEST_PORTS", raising=False)
    assert 1024 <= free_port() < 65536


@contextmanager
def _taken_port() -> Iterator[int]:
    """A port some server listens on for the block."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_a_port_from_the_range_and_never_a_taken_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with _taken_port() as port:
        monkeypatch.setenv("BACKTOR_TEST_PORTS", f"{port}-{port + 1}")
        for _ in range(20):
            assert free_port() == port + 1


def test_a_range_with_no_free_port_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    with _taken_port() as port:
        monkeypatch.setenv("BACKTOR_TEST_PORTS", f"{port}-{port}")
        with pytest.raises(RuntimeError, match="no port in the range is free"):
            free_port()


@pytest.mark.parametrize("text", ["20000", "20000-", "2-3", "30000-20000", "a-b", "20000-70000"])
def test_a_bad_range_is_named(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("BACKTOR_TEST_PORTS", text)
    with pytest.raises(ValueError, match="BACKTOR_TEST_PORTS"):
        free_port()
