"""How fast one `backtor api` process answers the read routes, each against its own /health.

Run: .venv/bin/python bench/api_reads.py [--database sqlite|postgres] [--specs 10000]
     [--backups 12] [--big-backups 20000] [--requests 2000] [--heavy-requests 200]
     [--threads 4] [--rounds 4] [--routes NAME ...] [--token TOKEN] [--log-level info]
     [--database-url URL [--no-fill]] [--server-pythonpath DIR]
     [--py-spy FILE [--py-spy-route NAME] [--py-spy-gil] [--py-spy-format raw|flamegraph]]

A fresh database (a file in a temporary directory, or a new database on the local
PostgreSQL of scripts/postgres, dropped at the end) is migrated and filled straight through
SQLAlchemy: N specs (`bench-spec-000000`...) with `--backups` backups each (COMPLETED, the
oldest REMOVED, a few FAILED, some verified or restored), and one spec `bench-big` with
`--big-backups`. `--database-url` uses a database of your own instead (migrated and filled
unless `--no-fill`: then it must hold a fill of the same `--specs`).

Then one real `backtor api` process (the command as an operator runs it: uvicorn, its
access log at LOG_LEVEL info; no Conductor needed) is driven by `--threads` client threads,
each on its own keep-alive connection, for a fixed number of requests per route. The routes
take turns in `--rounds` rounds, so a load change on a shared machine hits every route
alike; each route's figures add its rounds up. Every answer must be 200 and, the first
time, have the expected shape. The routes (`--routes` picks some):

    health                  GET /health: the yardstick
    list-100                GET /backup?limit=100&after=<a random name>
    get                     GET /backup/<a random spec>
    materialized            GET /backup/<a random spec>/materialized (its `--backups`)
    retention               GET /backup/<a random spec>/retention
    preview                 POST /backup/<a random spec>/retention/preview
    list-1000               GET /backup (the default page: 1,000 specs)       heavy
    big-materialized-1000   GET /backup/bench-big/materialized (1,000 rows)    heavy
    big-materialized-100    GET /backup/bench-big/materialized?limit=100
    big-retention-1000      GET /backup/bench-big/retention (1,000 rows)       heavy

A heavy route gets `--heavy-requests` instead of `--requests`. Printed per route: req/s,
p50, p99 and max latency (client side, the whole request), bytes per answer and the rate's
ratio to /health in the same run. The load average is printed before and after: the figures
move with it.

`--server-pythonpath DIR` runs the server on another copy of the package (a checkout's
`backtor/`, with `migrations/` copied in as `backtor/migrations`): before and after in one
sitting, on one database. `--py-spy FILE` records the server with py-spy (every thread;
`--py-spy-gil`: only the one holding the GIL, so CPU rather than waits) while one route
(`--py-spy-route`, default get) runs, into FILE.<round>: collapsed stacks (`raw`) or an SVG.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import insert, select

from backtor.db.engine import make_engine
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import Backup, BackupSpec, BackupStatus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.databases import (  # noqa: E402
    create_postgres_database,
    default_retention_columns,
    drop_postgres_database,
)
from tests.support.net import free_port  # noqa: E402
from tests.support.processes import backtor_env, start, stop  # noqa: E402

BIG = "bench-big"
PAGE = 100  # the light list route's page
PREVIEW_BODY = json.dumps({"retentionDaily": "7", "retentionWeekly": "2"}).encode()


def spec_name(i: int) -> str:
    return f"bench-spec-{i:06d}"


# -- the database --------------------------------------------------------------------------


def _spec_row(i: int, name: str, rng: random.Random, now: datetime) -> dict[str, object]:
    retention = default_retention_columns()
    verify = rng.random() < 0.2
    return {
        "name": name,
        "enabled": rng.random() > 0.05,
        "cron_string": f"0 {rng.randrange(60)} {rng.randrange(24)} * * *",
        "cron_derived": False,
        "timezone": rng.choice(["UTC", "UTC", "Europe/Berlin", "America/New_York"]),
        "worker_config": json.dumps({"kind": "filesystem", "source": f"/srv/{name}"}),
        "timeout_seconds": 3600 if i % 3 == 0 else None,
        "misfire_grace_seconds": 3600,
        "last_update": now - timedelta(days=30),
        "created_at": now - timedelta(days=90),
        "next_fire_at": now + timedelta(seconds=rng.randrange(86_400)),
        "deleting": False,
        "verify_cron_string": "0 0 5 * * *" if verify else None,
        "verify_sample_rate": 0.25 if verify else None,
        "next_verify_at": now + timedelta(hours=5) if verify else None,
        "jitter_seconds": rng.choice([0, 0, 300]),
        **retention,
    }


def _backup_rows(
    spec_id: int, name: str, count: int, rng: random.Random, now: datetime
) -> Iterator[dict[str, object]]:
    """`count` daily backups, newest yesterday: mostly COMPLETED, the oldest REMOVED, a few
    FAILED; some verified, one in 50 restored."""
    removed = max(0, count - 9)
    for k in range(count):
        at = now - timedelta(days=count - k)
        status = BackupStatus.REMOVED if k < removed else BackupStatus.COMPLETED
        if rng.random() < 0.05:
            status = BackupStatus.FAILED
        verified = status is BackupStatus.COMPLETED and rng.random() < 0.3
        restored = status is BackupStatus.COMPLETED and rng.random() < 0.02
        yield {
            "spec_id": spec_id,
            "status": status.value,
            "data_id": None if status is BackupStatus.FAILED else f"{name}/{k:06d}.tar.gz",
            "scheduled_at": at,
            "start_time": at + timedelta(seconds=1),
            "end_time": at + timedelta(minutes=rng.randrange(1, 30)),
            "size_mb": None if status is BackupStatus.FAILED else round(rng.uniform(1, 5e4), 3),
            "tags": "daily,weekly" if at.weekday() == 6 else "daily",
            "pinned": rng.random() < 0.01,
            "create_workflow_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "backup_task_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "remove_workflow_id": (
                str(uuid.UUID(int=rng.getrandbits(128))) if status is BackupStatus.REMOVED else None
            ),
            "last_error": "the backup task failed: disk full" if status.value == "FAILED" else None,
            "checksum": None if status is BackupStatus.FAILED else f"{rng.getrandbits(256):064x}",
            "verify_status": "VERIFIED" if verified else "NEVER",
            "last_verified_at": at + timedelta(hours=2) if verified else None,
            "verify_details": "checksum matches" if verified else None,
            "verify_workflow_id": str(uuid.UUID(int=rng.getrandbits(128))) if verified else None,
            "verify_run_status": "COMPLETED" if verified else None,
            "verify_requested_at": at + timedelta(hours=1) if verified else None,
            "restore_workflow_id": str(uuid.UUID(int=rng.getrandbits(128))) if restored else None,
            "restore_status": "COMPLETED" if restored else None,
            "restore_requested_at": at + timedelta(hours=3) if restored else None,
            "restore_details": "restored to /srv/restored" if restored else None,
        }


def fill(
    database_url: str,
    specs: int,
    backups: int,
    big_backups: int,
    seed: int = 7,
    now: datetime | None = None,
) -> int:
    """Insert the specs and their backups; returns how many backup rows were written."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC).replace(microsecond=0)
    engine = make_engine(database_url)
    written = 0
    try:
        names = [spec_name(i) for i in range(specs)] + [BIG]
        for begin in range(0, len(names), 5000):
            rows = [_spec_row(begin + i, n, rng, now) for i, n in enumerate(names[begin:][:5000])]
            with engine.begin() as conn:
                conn.execute(insert(BackupSpec), rows)
        with engine.connect() as conn:
            ids = list(conn.execute(select(BackupSpec.id, BackupSpec.name)).all())
        batch: list[dict[str, object]] = []
        for spec_id, name in ids:
            count = big_backups if name == BIG else backups
            batch.extend(_backup_rows(spec_id, name, count, rng, now))
            if len(batch) >= 20_000:
                with engine.begin() as conn:
                    conn.execute(insert(Backup), batch)
                written += len(batch)
                batch = []
        if batch:
            with engine.begin() as conn:
                conn.execute(insert(Backup), batch)
            written += len(batch)
    finally:
        engine.dispose()
    if database_url.startswith("postgresql"):
        # What autovacuum does on a live database: statistics and the visibility map.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    return written


# -- the routes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    target: Callable[[random.Random], str]
    heavy: bool = False
    body: bytes | None = None
    check: Callable[[object], bool] = lambda _answer: True


def routes(specs: int, backups: int) -> list[Route]:
    """Every route the bench knows, by name: the light ones first."""

    def one(rng: random.Random) -> str:
        return spec_name(rng.randrange(specs))

    def page(rng: random.Random) -> str:
        return f"/backup?limit={PAGE}&after={spec_name(rng.randrange(max(1, specs - PAGE)))}"

    def is_list(size: int) -> Callable[[object], bool]:
        return lambda answer: isinstance(answer, list) and len(answer) == size

    def is_spec(answer: object) -> bool:
        return isinstance(answer, dict) and str(answer.get("name", "")).startswith("bench-")

    def is_plan(answer: object) -> bool:
        return isinstance(answer, dict) and "summary" in answer and "backups" in answer

    return [
        Route("health", "GET", lambda _rng: "/health"),
        Route("list-100", "GET", page, check=is_list(PAGE)),
        Route("get", "GET", lambda rng: f"/backup/{one(rng)}", check=is_spec),
        Route(
            "materialized",
            "GET",
            lambda rng: f"/backup/{one(rng)}/materialized",
            check=is_list(min(backups, 1000)),
        ),
        Route("retention", "GET", lambda rng: f"/backup/{one(rng)}/retention", check=is_plan),
        Route(
            "preview",
            "POST",
            lambda rng: f"/backup/{one(rng)}/retention/preview",
            body=PREVIEW_BODY,
            check=is_plan,
        ),
        Route(
            "list-1000",
            "GET",
            lambda _rng: "/backup",
            heavy=True,
            check=is_list(min(1000, specs + 1)),
        ),
        Route(
            "big-materialized-1000",
            "GET",
            lambda _rng: f"/backup/{BIG}/materialized",
            heavy=True,
            check=is_list(1000),
        ),
        Route(
            "big-materialized-100",
            "GET",
            lambda _rng: f"/backup/{BIG}/materialized?limit=100",
            check=is_list(100),
        ),
        Route("big-retention-1000", "GET", lambda _rng: f"/backup/{BIG}/retention", heavy=True),
    ]


# -- the server and the clients ----------------------------------------------------------


@contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[tuple[str, int, int]]:
    """`backtor api` on a free port: (host, port, pid) once /health answers."""
    port = free_port()
    process = start(["api", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"backtor api did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield "127.0.0.1", port, process.pid
    finally:
        stop(process)


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    requests: int = 0
    size: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.wall if self.wall else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


class Client:
    """One thread's keep-alive connection."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=120)
        self.headers = headers

    def call(self, route: Route, target: str) -> tuple[bytes, float]:
        """The answer's body and the request's time, in seconds.

        uvicorn closes a connection idle for 5 s (while the other threads finish a heavy
        chunk): then one new connection, and the request's time counts from there.
        """
        headers = dict(self.headers)
        if route.body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            began = time.perf_counter()
            try:
                self.conn.request(route.method, target, body=route.body, headers=headers)
                answer = self.conn.getresponse()
                body = answer.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt == 2:
                    raise
        spent = time.perf_counter() - began
        if answer.status != 200:
            raise RuntimeError(f"{route.method} {target}: {answer.status} {body[:300]!r}")
        return body, spent


def run_chunk(clients: list[Client], route: Route, count: int, seed: int, figures: Figures) -> None:
    """`count` requests of `route`, shared by the clients' threads; adds to `figures`."""
    per_thread = [
        count // len(clients) + (1 if i < count % len(clients) else 0) for i in range(len(clients))
    ]
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients) + 1)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        targets = [route.target(rng) for _ in range(per_thread[i])]
        spent: list[float] = []
        size = 0
        barrier.wait()
        try:
            for target in targets:
                body, seconds = clients[i].call(route, target)
                size = len(body)
                spent.append(seconds)
        except BaseException as error:
            failures.append(error)
        with lock:
            figures.latencies.extend(spent)
            figures.size = size or figures.size

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    figures.wall += time.perf_counter() - began
    figures.requests += count
    if failures:
        raise failures[0]


def check_shapes(client: Client, chosen: list[Route]) -> None:
    rng = random.Random(1)
    for route in chosen:
        answer = json.loads(client.call(route, route.target(rng))[0])
        if not route.check(answer):
            raise RuntimeError(f"{route.name}: unexpected answer {str(answer)[:300]}")


def bench(
    host: str,
    port: int,
    pid: int,
    chosen: list[Route],
    args: argparse.Namespace,
) -> dict[str, Figures]:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    clients = [Client(host, port, headers) for _ in range(args.threads)]
    check_shapes(clients[0], chosen)
    for route in chosen:  # warm: connections, caches, the first plans of each statement
        run_chunk(clients, route, max(args.threads * 5, 20), 0, Figures())
    results = {route.name: Figures() for route in chosen}
    for round_no in range(1, args.rounds + 1):
        for route in chosen:
            count = (args.heavy_requests if route.heavy else args.requests) // args.rounds
            spy = None
            if args.py_spy and route.name == args.py_spy_route:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(pid),
                        "--output",
                        f"{args.py_spy}.{round_no}",
                        "--format",
                        args.py_spy_format,
                        "--rate",
                        "250",
                        "--nonblocking",
                        *(["--gil"] if args.py_spy_gil else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            try:
                run_chunk(clients, route, count, round_no, results[route.name])
            finally:
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(timeout=60)
    return results


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def table(results: dict[str, Figures], chosen: list[Route]) -> str:
    health = results.get("health")
    lines = [
        "| route | requests | req/s | p50 ms | p99 ms | max ms | bytes | x /health |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for route in chosen:
        f = results[route.name]
        ratio = f"{f.rate / health.rate:.2f}" if health and health.rate else "-"
        lines.append(
            f"| {route.name} | {f.requests} | {f.rate:,.0f} | {f.percentile(0.5) * 1000:.1f} | "
            f"{f.percentile(0.99) * 1000:.1f} | {max(f.latencies) * 1000:.1f} | {f.size:,} | "
            f"{ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--database-url", help="use this database (migrated here)")
    parser.add_argument("--no-fill", action="store_true", help="the database is filled already")
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--backups", type=int, default=12, help="backups per spec")
    parser.add_argument("--big-backups", type=int, default=20_000, help="backups of bench-big")
    parser.add_argument("--requests", type=int, default=2000, help="per light route")
    parser.add_argument("--heavy-requests", type=int, default=200, help="per heavy route")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--routes", nargs="+", help="route names (default: all)")
    parser.add_argument("--token", help="run the API with BACKTOR_API_TOKEN (and send it)")
    parser.add_argument("--log-level", default="info", help="the API's LOG_LEVEL")
    parser.add_argument("--py-spy", help="record the server with py-spy into FILE.<round>")
    parser.add_argument("--py-spy-route", default="get")
    parser.add_argument(
        "--py-spy-gil", action="store_true", help="only the thread holding the GIL: CPU, not waits"
    )
    parser.add_argument("--py-spy-format", default="raw", choices=("raw", "flamegraph"))
    parser.add_argument(
        "--server-pythonpath",
        help="put DIR first on the server's PYTHONPATH (another copy of the package: before/after "
        "in one sitting)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (print its URL)")
    args = parser.parse_args()

    every = routes(args.specs, args.backups)
    chosen = [r for r in every if args.routes is None or r.name in args.routes]
    if args.routes and len(chosen) != len(args.routes):
        parser.error(f"routes are: {', '.join(r.name for r in every)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    scratch = Path(tempfile.mkdtemp(prefix="backtor-bench-api-"))
    created: tuple[str, str] | None = None
    try:
        if args.database_url:
            database_url = args.database_url
        elif args.database == "postgres":
            created = create_postgres_database()
            database_url = created[0]
        else:
            database_url = f"sqlite:///{scratch}/backtor.db"
        if not args.no_fill:
            upgrade_to_head(database_url)
            began = time.perf_counter()
            written = fill(database_url, args.specs, args.backups, args.big_backups)
            print(
                f"filled {args.specs + 1:,} specs and {written:,} backups in "
                f"{time.perf_counter() - began:.1f} s ({args.database})"
            )
        extra = {"BACKTOR_API_TOKEN": args.token} if args.token else {}
        if args.server_pythonpath:
            extra["PYTHONPATH"] = os.pathsep.join(
                p for p in (args.server_pythonpath, os.environ.get("PYTHONPATH")) if p
            )
        env = backtor_env(database_url, "http://127.0.0.1:9/api", LOG_LEVEL=args.log_level, **extra)
        with api_process(env, scratch / "api.log") as (host, port, pid):
            results = bench(host, port, pid, chosen, args)
            rss_kib = _rss_kib(pid)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            f"\n{args.database}, {args.specs:,} specs: one `backtor api`, {args.threads} client "
            f"threads, {args.rounds} rounds\n"
        )
        print(table(results, chosen))
        print(f"\napi RSS at the end: {rss_kib / 1024:.0f} MB")
        if args.keep:
            print(f"\ndatabase kept: {database_url}")
            created = None
    finally:
        if created is not None:
            drop_postgres_database(*created)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
