"""How long a /metrics scrape takes with many specs (the issue asks for under 200 ms at 10,000).

Run: .venv/bin/python bench/metrics_scrape.py [--specs 10000] [--scrapes 20] [--database-url URL]

A fresh PostgreSQL database on the local server (scripts/postgres) unless --database-url is
given, filled like a busy install: N specs with a realistic spread of schedules and zones
(about 130 distinct pairs), each with held backups (completed, some failed or failing to be
removed), 20 removed ones of history, and its counter rows. Then a real `backtor api`
process is scraped over HTTP, and the collector is timed in this process too, split into
its database queries and the text it writes. Printed: cold scrape (the expected periods
are computed then), then warm scrapes min / median / p95 / max, the answer's size and
series count, and the load average (the figures move with it on a shared machine). No
Conductor is needed (its reachability shows as 0).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from psycopg import sql
from sqlalchemy import insert, select

from backtor.core.policy import DEFAULT_POLICY
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import Backup, BackupSpec, BackupStatus, MetricCounter
from backtor.observability.collector import MetricsCollector
from backtor.observability.exposition import render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.processes import api_server, backtor_env  # noqa: E402

HISTORY = 20  # REMOVED backups per spec
HELD = 8  # COMPLETED backups per spec


def fresh_database() -> tuple[str, str]:
    """A new database on the local server: (its URL, the admin URL to drop it with)."""
    script = str(ROOT / "scripts" / "postgres")
    subprocess.run([script, "ensure"], check=True, capture_output=True)
    admin = subprocess.run(
        [script, "url", "backtor"], check=True, capture_output=True, text=True
    ).stdout.strip()
    name = f"backtor_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin.rsplit("/", 1)[0] + "/" + name, admin


def drop_database(url: str, admin: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def schedule(rng: random.Random) -> tuple[str, str]:
    """A (cron, zone) pair drawn like a real install's: mostly daily, some hourly or busier."""
    zone = rng.choices(["UTC", "Europe/Berlin", "America/New_York"], [6, 2, 2])[0]
    kind = rng.random()
    if kind < 0.6:
        return f"0 0 {rng.randrange(24)} * * *", zone
    if kind < 0.8:
        return f"0 {rng.randrange(0, 60, 5)} * * * *", zone
    if kind < 0.9:
        return f"0 30 {rng.randrange(1, 6)} * * MON-FRI", zone
    return f"0 */{rng.choice([5, 10, 15, 30])} * * * *", zone


def fill(database_url: str, specs: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    retention = {
        f"retention_{tier.value}": value
        for tier, value in zip(
            DEFAULT_POLICY.rules, DEFAULT_POLICY.to_fields().values(), strict=True
        )
    }
    spec_rows = []
    for i in range(specs):
        cron, zone = schedule(rng)
        spec_rows.append(
            {
                "name": f"bench-spec-{i:05d}",
                "enabled": rng.random() > 0.05,
                "cron_string": cron,
                "cron_derived": False,
                "timezone": zone,
                "worker_config": '{"bucket": "b"}',
                "misfire_grace_seconds": 3600,
                "last_update": now - timedelta(days=90),
                "created_at": now - timedelta(days=90),
                "next_fire_at": now + timedelta(hours=1),
                "deleting": False,
                **retention,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(BackupSpec), spec_rows)
        ids = list(conn.execute(select(BackupSpec.id, BackupSpec.name)).all())
    for start in range(0, len(ids), 500):
        backups: list[dict[str, object]] = []
        counters: list[dict[str, object]] = []
        for spec_id, name in ids[start : start + 500]:
            for k in range(HISTORY + HELD):
                status = BackupStatus.REMOVED if k < HISTORY else BackupStatus.COMPLETED
                if k == HISTORY and rng.random() < 0.05:
                    status = BackupStatus.REMOVE_FAILED
                ended = now - timedelta(hours=HISTORY + HELD - k)
                backups.append(
                    {
                        "spec_id": spec_id,
                        "status": status.value,
                        "data_id": f"{name}-{k}",
                        "scheduled_at": ended - timedelta(minutes=10),
                        "start_time": ended - timedelta(minutes=9),
                        "end_time": ended,
                        "size_mb": rng.uniform(10, 5000),
                        "tags": "daily",
                    }
                )
            if rng.random() < 0.1:
                failed_at = now - timedelta(days=2)
                backups.append(
                    {
                        "spec_id": spec_id,
                        "status": BackupStatus.FAILED.value,
                        "data_id": None,
                        "scheduled_at": failed_at,
                        "start_time": failed_at,
                        "end_time": failed_at + timedelta(minutes=1),
                        "size_mb": None,
                        "tags": "",
                    }
                )
            for family, label, amount in (
                ("backtor_backup_trigger", "success", 28),
                ("backtor_backup_trigger", "error", 1),
                ("backtor_workflow", "COMPLETED", 28),
                ("backtor_workflow", "success", 28),
                ("backtor_backup_tag", "success", 28),
                ("backtor_retention_backup_delete", "COMPLETED", 20),
                ("backtor_backup_skipped", "running", 1),
            ):
                counters.append(
                    {
                        "name": family,
                        "backup": name,
                        "label": label,
                        "spec_id": spec_id,
                        "value": amount,
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(Backup), backups)
            conn.execute(insert(MetricCounter), counters)
    engine.dispose()
    # What autovacuum does on a live database: statistics and the visibility map.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def timed(call: object, times: int) -> list[float]:
    assert callable(call)
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        spent.append(time.perf_counter() - began)
    return spent


def summary(spent: list[float]) -> str:
    ordered = sorted(spent)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"min {ordered[0] * 1000:7.1f} ms  median {statistics.median(ordered) * 1000:7.1f} ms"
        f"  p95 {p95 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument(
        "--database-url", default=None, help="an empty database (default: a fresh one)"
    )
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    created: tuple[str, str] | None = None
    if args.database_url:
        database_url = args.database_url
    else:
        created = fresh_database()
        database_url = created[0]
    try:
        upgrade_to_head(database_url)
        began = time.perf_counter()
        fill(database_url, args.specs)
        print(
            f"filled {args.specs} specs, {args.specs * (HISTORY + HELD)} backups and their "
            f"counters in {time.perf_counter() - began:.1f} s"
        )
        with tempfile.TemporaryDirectory() as logs:
            env = backtor_env(database_url, "http://127.0.0.1:9/api", LOG_LEVEL="warning")
            with api_server(env, Path(logs) / "api.log") as api:
                # The first scrapes compute the expected periods (a budget of 1 s each).
                first = timed(lambda: requests.get(f"{api}/metrics", timeout=120), 3)
                answer = requests.get(f"{api}/metrics", timeout=120)
                warm = timed(lambda: requests.get(f"{api}/metrics", timeout=120), args.scrapes)
        body = answer.content
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        print(f"answer: {len(body) / 1e6:.1f} MB, {series} series")
        firsts = ", ".join(f"{spent * 1000:.0f} ms" for spent in first)
        print(f"HTTP GET /metrics on `backtor api`, first three (periods computed): {firsts}")
        print(f"HTTP GET /metrics on `backtor api`, warm x{args.scrapes}: {summary(warm)}")

        engine = make_engine(database_url)
        collector = MetricsCollector(make_session_factory(engine), period_budget_seconds=60)
        collector.shared_families()  # fill the period cache
        families = collector.shared_families()
        queries = timed(collector.shared_families, args.scrapes)
        text = timed(lambda: render(families), args.scrapes)
        whole = timed(collector.exposition, args.scrapes)
        engine.dispose()
        print(f"in process, queries + families x{args.scrapes}: {summary(queries)}")
        print(f"in process, text rendering     x{args.scrapes}: {summary(text)}")
        print(f"in process, whole exposition   x{args.scrapes}: {summary(whole)}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if created is not None:
            drop_database(*created)
    return 0


if __name__ == "__main__":
    sys.exit(main())
