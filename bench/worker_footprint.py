"""What an idle `backtor worker` costs: CPU and memory of its whole process tree, per mode.

Run: .venv/bin/python bench/worker_footprint.py [--modes process thread] [--seconds 60]
     [--specs 0 100000] [--conductor-url URL] [--database-url URL]

For each spec count, a fresh PostgreSQL database on the local server (scripts/postgres)
unless --database-url is given (then one count only), with N enabled specs on daily crons
that come due between two and 22 hours from now: the tick evaluates them at every pass but
starts nothing, which is an idle install of that size. A Conductor is started
(scripts/conductor) unless --conductor-url is given. Then, per BACKTOR_WORKER_ISOLATION
mode, one `backtor worker` process: wait for its /ready probe (definitions registered,
runners polling, the watchdog's first round), let it settle, then over --seconds:

- CPU: utime + stime of every process of the tree (/proc/PID/stat), at the start and the
  end of the window, as a share of one core: meaningful on a busy machine too;
- memory at the end of the window: RSS (/proc/PID/status VmRSS) and PSS
  (/proc/PID/smaps_rollup, fairer for spawned children sharing pages), summed over the
  tree; processes and threads counted.

A table at the end puts the modes side by side; the load average is printed before and
after each worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import insert

from backtor.db.engine import make_engine
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import BackupSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.databases import daily_spec_row, throwaway_postgres  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.processes import backtor_env, start, stop  # noqa: E402

MODES = ("process", "thread")
TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 15.0  # after /ready: spawned runners finish importing, the tick is taken


@contextmanager
def conductor(given: str | None) -> Iterator[str]:
    if given:
        yield given.rstrip("/")
        return
    directory = tempfile.mkdtemp(prefix="bench-footprint-conductor-")
    script = str(ROOT / "scripts" / "conductor")
    port = free_port()
    subprocess.run([script, "start", "--port", str(port), "--dir", directory], check=True)
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        subprocess.run([script, "stop", "--dir", directory], check=False)


@contextmanager
def database(given: str | None) -> Iterator[str]:
    """The given database, or a fresh one on the local PostgreSQL server, dropped after."""
    if given:
        yield given
        return
    with throwaway_postgres() as url:
        yield url


def fill(database_url: str, specs: int) -> None:
    """N daily specs due 2 to 22 hours from now: evaluated at every pass, none fires."""
    upgrade_to_head(database_url)
    if not specs:
        return
    now = datetime.now(UTC).replace(microsecond=0)
    engine = make_engine(database_url)
    prefix = f"fp{uuid.uuid4().hex[:6]}"
    try:
        for first in range(0, specs, 10_000):
            rows = []
            for i in range(first, min(specs, first + 10_000)):
                due = now + timedelta(hours=2, seconds=(i * 7) % (20 * 3600))
                cron = f"{due.second} {due.minute} {due.hour} * * *"
                rows.append(daily_spec_row(f"{prefix}-{i:06d}", cron, due, now))
            with engine.begin() as conn:
                conn.execute(insert(BackupSpec), rows)
    finally:
        engine.dispose()


def tree(root: int) -> list[int]:
    """The process and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def threads(pid: int) -> int:
    return kib(f"/proc/{pid}/status", "Threads")


@dataclass(frozen=True)
class Footprint:
    mode: str
    specs: int
    processes: int
    threads: int
    cpu_percent: float
    rss_mb: float
    pss_mb: float
    per_process: str


def wait_ready(port: int, worker: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited; see {log}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready within {timeout:.0f} s; see {log}")


def measure(
    mode: str, specs: int, conductor_url: str, database_url: str, seconds: float, logs: Path
) -> Footprint:
    port = free_port()
    env = backtor_env(
        database_url,
        conductor_url,
        BACKTOR_WORKER_ISOLATION=mode,
        BACKTOR_WORKER_HEALTH_HOST="127.0.0.1",
        BACKTOR_WORKER_HEALTH_PORT=str(port),
    )
    log = logs / f"worker-{mode}-{specs}.log"
    print(f"[{mode}, {specs} specs] load average before: {os.getloadavg()}", flush=True)
    worker = start(["worker"], env, log)
    try:
        wait_ready(port, worker, log, timeout=120)
        time.sleep(SETTLE_SECONDS)
        pids = tree(worker.pid)
        before, began = cpu_ticks(pids), time.monotonic()
        time.sleep(seconds)
        pids_after = tree(worker.pid)
        if set(pids_after) != set(pids):
            print(f"  note: the tree changed during the window: {pids} -> {pids_after}")
        spent = (cpu_ticks(pids_after) - before) / TICKS
        elapsed = time.monotonic() - began
        rss = {pid: kib(f"/proc/{pid}/status", "VmRSS") for pid in pids_after}
        pss = {pid: kib(f"/proc/{pid}/smaps_rollup", "Pss") for pid in pids_after}
        thread_count = sum(threads(pid) for pid in pids_after)
        ready = requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).ok
        print(f"  still ready at the end: {ready}")
    finally:
        stop(worker)
    print(f"[{mode}, {specs} specs] load average after: {os.getloadavg()}", flush=True)
    return Footprint(
        mode=mode,
        specs=specs,
        processes=len(pids_after),
        threads=thread_count,
        cpu_percent=100 * spent / elapsed,
        rss_mb=sum(rss.values()) / 1024,
        pss_mb=sum(pss.values()) / 1024,
        per_process=" + ".join(f"{rss[p] / 1024:.0f}" for p in pids_after),
    )


def table(results: list[Footprint], seconds: float) -> str:
    lines = [
        f"| mode | specs | processes | threads | CPU, % of a core ({seconds:.0f} s) | "
        "RSS total | PSS total | RSS per process (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.specs:,} | {r.processes} | {r.threads} | {r.cpu_percent:.2f} % | "
            f"{r.rss_mb:.0f} MB | {r.pss_mb:.0f} MB | {r.per_process} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--specs", type=int, nargs="+", default=[0])
    parser.add_argument("--conductor-url", default=None)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.database_url and len(args.specs) > 1:
        parser.error("--database-url takes one --specs count")
    logs = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    results: list[Footprint] = []
    with conductor(args.conductor_url) as conductor_url:
        for specs in args.specs:
            with database(args.database_url) as database_url:
                began = time.monotonic()
                fill(database_url, specs)
                print(f"{specs:,} specs written in {time.monotonic() - began:.0f} s", flush=True)
                for mode in args.modes:
                    results.append(
                        measure(mode, specs, conductor_url, database_url, args.seconds, logs)
                    )
    print(f"\nworker logs: {logs}\n")
    print(table(results, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
