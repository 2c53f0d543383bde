"""How long a /metrics scrape takes, and how big it is, per-spec against aggregated mode.

Run: .venv/bin/python bench/metrics_scrape.py [--specs 1000 10000 100000] [--scrapes 20]
     [--modes per-spec aggregated] [--database-url URL] [--detail] [--layout scale]

For each spec count, a fresh PostgreSQL database on the local server (scripts/postgres)
unless --database-url is given (then one count only), filled like a busy install: N specs
with a realistic spread of schedules and zones (about 130 distinct pairs), each with held
backups (completed, some failed or failing to be removed), 20 removed ones of history, and
its counter rows; a fifth verify on a schedule (a few with a failed verification). Then a
real `backtor api` process per mode (BACKTOR_METRICS_MODE) is scraped over HTTP: the first
three scrapes (the expected periods are computed then), then warm scrapes min / median /
p95 / max, the answer's size and series count. A table at the end puts the modes side by
side with their ratios. --detail also times the collector in this process, split into its
database queries and the text it writes. The load average is printed before and after
(the figures move with it on a shared machine). No Conductor is needed (its reachability
shows as 0). --layout scale fills like bench/scale.py instead (every spec its own daily
cron, 90 daily backups each, 10 big specs with 100,000 hourly ones): the worst case for
aggregated mode's schedules, 86,400 distinct crons at 10^5 specs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from sqlalchemy import insert, select

from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import Backup, BackupSpec, BackupStatus, MetricCounter
from backtor.observability.aggregated import AggregatedCollector
from backtor.observability.collector import MetricsCollector
from backtor.observability.exposition import render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.databases import (  # noqa: E402
    create_postgres_database,
    default_retention_columns,
    drop_postgres_database,
)
from tests.support.processes import api_server, backtor_env  # noqa: E402

HISTORY = 20  # REMOVED backups per spec
HELD = 8  # COMPLETED backups per spec
MODES = ("per-spec", "aggregated")


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
    retention = default_retention_columns()
    spec_rows = []
    for i in range(specs):
        cron, zone = schedule(rng)
        spec_rows.append(
            {
                "name": f"bench-spec-{i:06d}",
                "verify_cron_string": "0 0 5 * * *" if rng.random() < 0.2 else None,
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
        ids = list(
            conn.execute(
                select(BackupSpec.id, BackupSpec.name, BackupSpec.verify_cron_string)
            ).all()
        )
    for start in range(0, len(ids), 500):
        backups: list[dict[str, object]] = []
        counters: list[dict[str, object]] = []
        for spec_id, name, verify_cron in ids[start : start + 500]:
            for k in range(HISTORY + HELD):
                status = BackupStatus.REMOVED if k < HISTORY else BackupStatus.COMPLETED
                if k == HISTORY and rng.random() < 0.05:
                    status = BackupStatus.REMOVE_FAILED
                ended = now - timedelta(hours=HISTORY + HELD - k)
                verdict, verified_at = "NEVER", None
                if verify_cron is not None and k == HISTORY + HELD - 1:
                    # The newest backup verified an hour after it ended (1 in 20 failed).
                    verdict = "FAILED" if rng.random() < 0.05 else "VERIFIED"
                    verified_at = ended + timedelta(minutes=30)
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
                        "verify_status": verdict,
                        "last_verified_at": verified_at,
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
                        "verify_status": "NEVER",
                        "last_verified_at": None,
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


def timed(call: Callable[[], object], times: int) -> list[float]:
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        spent.append(time.perf_counter() - began)
    return spent


def summary(spent: list[float]) -> str:
    ordered = sorted(spent)
    return (
        f"min {ordered[0] * 1000:7.1f} ms  median {statistics.median(ordered) * 1000:7.1f} ms"
        f"  p95 {p95(ordered) * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"
    )


def p95(spent: list[float]) -> float:
    ordered = sorted(spent)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Scrape:
    """One mode's figures at one spec count."""

    specs: int
    mode: str
    size: int  # bytes
    series: int
    first: list[float]  # seconds, the first three scrapes
    warm: list[float]
    backups: int | None = None  # rows filled, when not the spread layout's


def scrape(database_url: str, specs: int, mode: str, scrapes: int) -> Scrape:
    """Start `backtor api` in `mode` and time GET /metrics over HTTP."""
    with tempfile.TemporaryDirectory() as logs:
        env = backtor_env(
            database_url, "http://127.0.0.1:9/api", LOG_LEVEL="warning", BACKTOR_METRICS_MODE=mode
        )
        with api_server(env, Path(logs) / "api.log") as api:

            def get() -> requests.Response:
                answer = requests.get(f"{api}/metrics", timeout=600)
                answer.raise_for_status()
                return answer

            # The first scrapes compute the expected periods (a budget of 1 s each).
            first = timed(get, 3)
            body = get().content
            warm = timed(get, scrapes)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    assert (b'backup="' in body) is (mode == "per-spec"), mode
    return Scrape(specs, mode, len(body), series, first, warm)


def report(found: Scrape) -> None:
    firsts = ", ".join(f"{spent * 1000:.0f} ms" for spent in found.first)
    print(
        f"  {found.mode}: {found.size / 1e6:.2f} MB, {found.series} series; "
        f"first three {firsts}; warm x{len(found.warm)}: {summary(found.warm)}"
    )


def in_process(database_url: str, mode: str, scrapes: int) -> None:
    """The collector timed in this process: its queries, then the text it writes."""
    engine = make_engine(database_url)
    kind = AggregatedCollector if mode == "aggregated" else MetricsCollector
    collector = kind(make_session_factory(engine), period_budget_seconds=60)
    collector.shared_families()  # fill the period cache
    families = collector.shared_families()
    queries = timed(collector.shared_families, scrapes)
    text = timed(lambda: render(families), scrapes)
    whole = timed(collector.exposition, scrapes)
    engine.dispose()
    print(f"  {mode}, in process, queries + families x{scrapes}: {summary(queries)}")
    print(f"  {mode}, in process, text rendering     x{scrapes}: {summary(text)}")
    print(f"  {mode}, in process, whole exposition   x{scrapes}: {summary(whole)}")


def table(results: list[Scrape]) -> str:
    """Markdown: per spec count, each mode's warm median and p95, size and series, ratios."""
    lines = [
        "| specs | backups | mode | series | answer | first scrape | warm median | warm p95 |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    counts = sorted({r.specs for r in results})
    for specs in counts:
        rows = {r.mode: r for r in results if r.specs == specs}
        for mode in MODES:
            if mode not in rows:
                continue
            r = rows[mode]
            backups = r.backups or specs * (HISTORY + HELD)
            lines.append(
                f"| {specs:,} | {backups:,} | {mode} | {r.series:,} | "
                f"{r.size / 1e6:.2f} MB | {r.first[0] * 1000:,.0f} ms | "
                f"{statistics.median(r.warm) * 1000:,.1f} ms | {p95(r.warm) * 1000:,.1f} ms |"
            )
        if len(rows) == len(MODES):
            per, agg = rows["per-spec"], rows["aggregated"]
            lines.append(
                f"| {specs:,} | | per-spec / aggregated | {per.series / agg.series:,.0f}x | "
                f"{per.size / agg.size:,.0f}x | | "
                f"{statistics.median(per.warm) / statistics.median(agg.warm):,.1f}x | "
                f"{p95(per.warm) / p95(agg.warm):,.1f}x |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--specs", type=int, nargs="+", default=[10_000])
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--database-url", default=None, help="an empty database (default: a fresh one)"
    )
    parser.add_argument("--detail", action="store_true", help="time the collector in process")
    parser.add_argument(
        "--layout",
        choices=["spread", "scale"],
        default="spread",
        help="spread: about 130 schedules; scale: bench/scale.py's fill, a cron per spec",
    )
    args = parser.parse_args()
    if args.database_url and len(args.specs) > 1:
        parser.error("--database-url takes one --specs count")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: list[Scrape] = []
    for specs in args.specs:
        created: tuple[str, str] | None = None
        if args.database_url:
            database_url = args.database_url
        else:
            created = create_postgres_database()
            database_url = created[0]
        try:
            upgrade_to_head(database_url)
            began = time.perf_counter()
            rows: int | None = None
            if args.layout == "scale":
                from scale import fill as scale_fill  # bench/scale.py: the same directory

                rows = scale_fill(database_url, specs, 90, 10, 100_000)
            else:
                fill(database_url, specs)
            print(
                f"{specs} specs: filled {rows or specs * (HISTORY + HELD)} backups"
                f" in {time.perf_counter() - began:.1f} s"
            )
            for mode in args.modes:
                results.append(scrape(database_url, specs, mode, args.scrapes))
                results[-1].backups = rows
                report(results[-1])
                if args.detail:
                    in_process(database_url, mode, args.scrapes)
        finally:
            if created is not None:
                drop_postgres_database(*created)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\nHTTP GET /metrics on one `backtor api`, warm scrapes x{args.scrapes}:\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
