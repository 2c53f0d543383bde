"""Backtor's own processes, started as an operator would start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import requests

from tests.support.net import free_port

BACKTOR = str(Path(sys.executable).parent / "backtor")


def backtor_env(database_url: str, conductor_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "CONDUCTOR_API_URL": conductor_url,
            "LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("BACKTOR_API_TOKEN", None)
    env.update(extra)
    return env


def start(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [BACKTOR, *args],
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every runner it spawned, at once: a crash."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def api_server(env: Mapping[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    process = start(["api", "--host", "127.0.0.1", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"backtor api did not start; see {log}:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield base
    finally:
        stop(process)


@contextmanager
def workers(
    env: Mapping[str, str], log_dir: Path, count: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [start(["worker"], env, log_dir / f"worker-{i}.log") for i in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            stop(process)


class Replica:
    """One `backtor worker` replica with its own probe port: the unit an operator deploys.

    Its task runners are child processes in its process group (the worker is started in a
    new session), so `owns(pid)` tells which replica a runner belongs to; they poll Conductor
    under the worker id `name` (conductor-python's CONDUCTOR_WORKER_ALL_WORKER_ID), so a
    task's `workerId` in Conductor names the replica that polled it.
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.log = log_dir / f"{name}.log"
        self.process = start(
            ["worker"],
            {
                **env,
                "BACKTOR_WORKER_HEALTH_HOST": "127.0.0.1",
                "BACKTOR_WORKER_HEALTH_PORT": str(self.port),
                "CONDUCTOR_WORKER_ALL_WORKER_ID": name,
            },
            self.log,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        """The worker's own readiness probe: registered, runners alive, watchdog running."""
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).ok
        except requests.RequestException:
            return False

    def owns(self, pid: int) -> bool:
        try:
            return self.alive() and os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        kill_group(self.process)

    def stop(self) -> None:
        stop(self.process)


@contextmanager
def replicas(env: Mapping[str, str], log_dir: Path) -> Iterator[list[Replica]]:
    """A growing list of replicas (append `Replica(...)`s); all stopped at the end."""
    started: list[Replica] = []
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()
