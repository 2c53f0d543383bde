"""How fast Backtor starts due backups, next to Conductor's own start rate.

Run: .venv/bin/python bench/schedule.py [--sizes 10 100 1000] [--rss-specs 10000]
     [--no-sequential]

For each N: N specs all due in the same second; a real `backtor worker` process (the tick in
Conductor, the fire ledger in PostgreSQL) starts their create_backup workflows. Printed:
the time from the due second until the last create_backup started, next to the time the
same number of plain `POST /api/workflow` calls take on the same server in the same run
(one after another: the floor; and 8 at a time, as Backtor starts them), the ratios, and
the schedule lag (start time minus fire time) p50/p99. Then the worker's memory with
10,000 specs whose fires are spread over the hour.

Uses its own Conductor server (scripts/conductor, a throwaway directory) unless
CONDUCTOR_API_URL is set, and a fresh PostgreSQL database on the local server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import insert, select

from backtor.conductor.http import ConductorClient
from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import BackupSpec, Fire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.databases import daily_spec_row, throwaway_postgres  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.processes import backtor_env, start, stop  # noqa: E402

LEAD = timedelta(seconds=20)  # specs come due this long after the worker starts


@contextmanager
def conductor() -> Iterator[str]:
    given = os.environ.get("CONDUCTOR_API_URL")
    if given:
        yield given.rstrip("/")
        return
    directory = tempfile.mkdtemp(prefix="bench-conductor-")
    port = free_port()
    script = str(ROOT / "scripts" / "conductor")
    subprocess.run([script, "start", "--port", str(port), "--dir", directory], check=True)
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        subprocess.run([script, "stop", "--dir", directory], check=False)


def insert_specs(database_url: str, prefix: str, crons: list[str], due: list[datetime]) -> None:
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    rows = [
        daily_spec_row(f"{prefix}-{i:05d}", cron, when, now)
        for i, (cron, when) in enumerate(zip(crons, due, strict=True))
    ]
    with engine.begin() as conn:
        conn.execute(insert(BackupSpec), rows)
    engine.dispose()


def plain_starts(conductor_url: str, n: int, concurrency: int) -> float:
    """N plain `POST /api/workflow` starts, `concurrency` at a time: the floor.

    Plain requests with a long timeout (not Backtor's client, whose start timeout is 5 s):
    on a loaded server the floor is slow, and must not fail for it.
    """
    version = DEFINITIONS.workflow_version("create_backup")
    tag = uuid.uuid4().hex[:8]
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=max(concurrency, 2)))

    def one(i: int) -> str:
        answer = session.post(
            f"{conductor_url}/workflow",
            json={
                "name": "create_backup",
                "version": version,
                "correlationId": f"plain-{tag}-{i}",
                "input": {"backupName": f"plain-{tag}-{i}", "workerConfig": "{}"},
            },
            timeout=120,
        )
        answer.raise_for_status()
        return answer.text.strip()

    began = time.perf_counter()
    if concurrency == 1:
        started = [one(i) for i in range(n)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            started = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - began
    session.close()
    terminate(conductor_url, started)
    return elapsed


def warm_up(conductor_url: str) -> None:
    """A few starts before measuring: a server just started compiles the start fence's jq
    program on its first start, which can take longer than the client's start timeout."""
    deadline = time.monotonic() + 120
    while True:
        try:
            plain_starts(conductor_url, 20, 1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise


def terminate(conductor_url: str, workflow_ids: list[str]) -> None:
    """Leave the server as it was, so that each measurement starts from the same load."""
    for first in range(0, len(workflow_ids), 500):
        requests.post(
            f"{conductor_url}/workflow/bulk/terminate",
            params={"reason": "benchmark over"},
            json=workflow_ids[first : first + 500],
            timeout=300,
        ).raise_for_status()


@dataclass(frozen=True)
class Herd:
    """One herd's figures: from the due second to the last start, each fire's lag, and the
    worker's RSS (KiB, by pid) at the end."""

    last_start: float
    lags: list[float]
    rss: dict[int, int]


def herd_starts(conductor_url: str, database_url: str, n: int, logs: Path) -> Herd:
    """N specs due in the same second, added to a migrated database (which may hold other
    specs: only the herd's fires are followed), started by a real `backtor worker`."""
    due = (datetime.now(UTC) + LEAD).replace(microsecond=0)
    cron = f"{due.second} {due.minute} {due.hour} * * *"
    prefix = f"herd{uuid.uuid4().hex[:6]}"
    insert_specs(database_url, prefix, [cron] * n, [due] * n)
    herd = (
        select(Fire.scheduled_at, Fire.started_at, Fire.workflow_id)
        .join(BackupSpec, BackupSpec.id == Fire.spec_id)
        .where(Fire.status == "STARTED", BackupSpec.name.startswith(f"{prefix}-"))
    )
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    env = backtor_env(database_url, conductor_url)
    worker = start(["worker"], env, logs / f"worker-{prefix}-{n}.log")
    try:
        # At 5 starts a second at the least: a herd of 10,000 on a slow server takes minutes.
        deadline = time.monotonic() + LEAD.total_seconds() + max(300.0, n / 5)
        while time.monotonic() < deadline:
            with sessions() as session:
                started = session.execute(herd).all()
            if len(started) >= n:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"only {len(started)} of {n} started; see {logs}")
        rss = process_tree_rss(worker.pid)
    finally:
        stop(worker)
        engine.dispose()
    terminate(conductor_url, [run for _, _, run in started if run is not None])
    times = [(fired, began) for fired, began, _ in started if began is not None]  # STARTED: set
    lags = sorted((began - fired).total_seconds() for fired, began in times)
    last = max(began for _, began in times).timestamp() - due.timestamp()
    return Herd(last, lags, rss)


def backtor_starts(conductor_url: str, n: int, logs: Path) -> tuple[float, list[float]]:
    with throwaway_postgres() as database_url:
        upgrade_to_head(database_url)
        found = herd_starts(conductor_url, database_url, n, logs)
    return found.last_start, found.lags


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def worker_rss(conductor_url: str, specs: int, seconds: float, logs: Path) -> None:
    with throwaway_postgres() as database_url:
        upgrade_to_head(database_url)
        now = datetime.now(UTC)
        crons, due = [], []
        for i in range(specs):
            second, minute = i % 60, (i // 60) % 60
            crons.append(f"{second} {minute} * * * *")
            first = now.replace(minute=minute, second=second, microsecond=0)
            due.append(first if first > now else first + timedelta(hours=1))
        insert_specs(database_url, f"rss{uuid.uuid4().hex[:6]}", crons, due)
        env = backtor_env(database_url, conductor_url)
        worker = start(["worker"], env, logs / "worker-rss.log")
        samples: list[dict[int, int]] = []
        try:
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                time.sleep(5)
                samples.append(process_tree_rss(worker.pid))
        finally:
            stop(worker)
        print(f"\nworker memory with {specs} specs (fires spread over the hour), {seconds:.0f} s:")
        for pid in sorted(samples[-1]):
            series = [s.get(pid, 0) / 1024 for s in samples]
            role = "main" if pid == worker.pid else "runner"
            print(
                f"  pid {pid} ({role}): first {series[0]:.0f} MB, last {series[-1]:.0f} MB, "
                f"max {max(series):.0f} MB"
            )


def process_tree_rss(root: int) -> dict[int, int]:
    """RSS in KiB of a process and its children (Linux /proc)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,ppid=,rss=,args=", "-e"], capture_output=True, text=True
    )
    rows = [line.split(None, 3) for line in out.stdout.splitlines()]
    tree = {root}
    for _ in range(3):
        tree |= {int(r[0]) for r in rows if int(r[1]) in tree and "resource_tracker" not in r[3]}
    return {int(r[0]): int(r[2]) for r in rows if int(r[0]) in tree}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rss-specs", type=int, default=10_000)
    parser.add_argument("--rss-seconds", type=float, default=90)
    parser.add_argument(
        "--no-sequential",
        action="store_true",
        help="skip the one-at-a-time floor (10,000 starts one by one take long)",
    )
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-schedule-"))
    with conductor() as url:
        register_definitions(ConductorClient(url))
        warm_up(url)
        print(
            f"{'N':>6} {'backtor s':>10} {'plain 1x s':>11} {'plain 8x s':>11} "
            f"{'ratio 1x':>9} {'ratio 8x':>9} {'lag p50 s':>10} {'lag p99 s':>10}"
        )
        for n in args.sizes:
            sequential = float("nan") if args.no_sequential else plain_starts(url, n, 1)
            parallel = plain_starts(url, n, 8)
            took, lags = backtor_starts(url, n, logs)
            print(
                f"{n:>6} {took:>10.3f} {sequential:>11.3f} {parallel:>11.3f} "
                f"{took / sequential:>9.2f} {took / parallel:>9.2f} "
                f"{percentile(lags, 0.5):>10.3f} {percentile(lags, 0.99):>10.3f}"
            )
        if args.rss_specs:
            worker_rss(url, args.rss_specs, args.rss_seconds, logs)
    print(f"\nlogs: {logs}; lag p50 {statistics.median(lags):.3f} s at N={args.sizes[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
