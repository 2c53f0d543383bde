"""Backtor at scale on PostgreSQL: each cost at 10^3, 10^4 and 10^5 specs, next to its floor.

Run: .venv/bin/python bench/scale.py [--sizes 1000 10000 100000] [--backups-per-spec 90]
     [--big-specs 10] [--big-backups 100000] [--herd 1000 10000] [--passes 20]
     [--shards 1 3] [--api-requests 400] [--scrapes 5] [--skip herd api metrics]

For each size a fresh database on the local PostgreSQL of scripts/postgres is migrated and
filled straight in SQL (generate_series): N specs `bench-spec-NNNNNN` whose daily fires are
spread evenly over the day, each with `--backups-per-spec` daily backups (all but the newest
30 REMOVED), plus `--big-specs` specs with `--big-backups` hourly backups each:
`bench-big` (all but the newest 30 REMOVED, the shape a long-lived spec has) and
`bench-big-all-NN` (every one COMPLETED: the worst case for a retention run). At the
defaults, 10^5 specs make 10,000,000 backup rows. One Conductor server (scripts/conductor,
or CONDUCTOR_API_URL) serves every size. Printed, per size:

- pass: `run_tick` in this process against the real server, `--passes` passes one after
  another at the real clock (a pass starts the fires due then: about N / 86,400 a second).
  Passes that started nothing, p50/p99, next to one `SELECT 1` round trip on the same pool;
  passes that started fires, their time per start, next to one plain `POST /api/workflow`
  (one at a time, the same run): with starts in it a pass is as slow as Conductor.
  For each K of `--shards`, a round is one pass of each tick shard (K set in the database),
  timed by its slowest shard: the round's time when each shard has a replica of its own.
- retention: a retention run (`apply_plan`: read the candidates, plan, store tags, mark
  removals under the cap of 100) of `bench-big` and of `bench-big-all-00`, the second
  after one that stored the tags, rolled back; next to `sorted()` over the same
  candidates' times (the least a plan must do).
- herd: `--herd` specs due in the same second, added to the filled database, started by a
  real `backtor worker` (bench/schedule.py's herd_starts); next to N plain 8-way
  `POST /api/workflow` starts on the same server in the same run; lag p50/p99; the
  worker's RSS (all its processes).
- api: bench/api_reads.py against the filled database (`--no-fill`): the spec list page,
  a spec, a page of backups and the materialized routes, each next to /health of the same
  process; rate, p99 and the api's RSS.
- metrics: GET /metrics in both modes (bench/metrics_scrape.py's scrape).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import select, text, update

from backtor.conductor.http import ConductorClient
from backtor.conductor.registration import register_definitions
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.models import BackupSpec, SchedulerState
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings
from backtor.scheduling.recording import apply_plan, completed_records
from backtor.scheduling.tick import run_tick

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
from metrics_scrape import scrape  # noqa: E402
from schedule import conductor, herd_starts, percentile, plain_starts, warm_up  # noqa: E402

from tests.support.databases import (  # noqa: E402
    create_postgres_database,
    default_retention_columns,
    drop_postgres_database,
)

KEPT = 30  # the newest backups of a spec that are still COMPLETED; older ones are REMOVED

# Bind parameters are typed once, in `p`: PostgreSQL cannot infer a bare parameter's type.
_SPECS = text(
    """
    WITH p AS (SELECT CAST(:now AS timestamptz) AS now, CAST(:n AS integer) AS n)
    INSERT INTO backup_spec (name, enabled, cron_string, cron_derived, timezone,
        worker_config, misfire_grace_seconds, last_update, created_at, next_fire_at,
        retention_minutely, retention_hourly, retention_daily, retention_weekly,
        retention_monthly, retention_yearly)
    SELECT 'bench-spec-' || lpad(g::text, 6, '0'), true,
        (o.at % 60) || ' ' || (o.at / 60 % 60) || ' ' || (o.at / 3600) || ' * * *', false,
        'UTC', '{"kind": "filesystem"}', 3600, p.now - interval '30 days',
        p.now - interval '90 days',
        CASE WHEN o.fire > p.now THEN o.fire ELSE o.fire + interval '1 day' END,
        :minutely, :hourly, :daily, :weekly, :monthly, :yearly
    FROM p, generate_series(0, p.n - 1) AS g,
        LATERAL (SELECT (g::bigint * 86400 / p.n)::int AS at) AS a,
        LATERAL (SELECT a.at, date_trunc('day', p.now) + make_interval(secs => a.at) AS fire)
            AS o
    """
)
_BIG_SPEC = text(
    """
    WITH p AS (SELECT CAST(:now AS timestamptz) AS now)
    INSERT INTO backup_spec (name, enabled, cron_string, cron_derived, timezone,
        worker_config, misfire_grace_seconds, last_update, created_at, next_fire_at,
        retention_minutely, retention_hourly, retention_daily, retention_weekly,
        retention_monthly, retention_yearly)
    SELECT :name, true, '0 30 * * * *', false, 'UTC', '{"kind": "filesystem"}', 3600,
        p.now, p.now, date_trunc('hour', p.now) + interval '90 minutes',
        :minutely, :hourly, :daily, :weekly, :monthly, :yearly
    FROM p
    """
)
# The backup table's indexes that back no constraint.
_PLAIN_INDEXES = text(
    """
    SELECT i.indexname, i.indexdef FROM pg_indexes AS i
    WHERE i.tablename = 'backup' AND NOT EXISTS (
        SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
    """
)
# `count` backups per spec of `names`, one a `step` back from now, the newest `kept`
# COMPLETED (kept NULL: all of them).
_BACKUPS = text(
    """
    WITH p AS (
        SELECT CAST(:now AS timestamptz) AS now, CAST(:count AS integer) AS count,
            CAST(:kept AS integer) AS kept, CAST(:step AS interval) AS step
    )
    INSERT INTO backup (spec_id, status, data_id, scheduled_at, start_time, end_time, size_mb,
        tags, pinned, create_workflow_id, backup_task_id, remove_workflow_id)
    SELECT s.id, CASE WHEN t.held THEN 'COMPLETED' ELSE 'REMOVED' END,
        s.name || '/' || k, t.at, t.at + interval '1 second', t.at + interval '5 minutes',
        (k % 977) * 1.5, '', false, md5(s.id || ':c:' || k), md5(s.id || ':t:' || k),
        CASE WHEN t.held THEN NULL ELSE md5(s.id || ':r:' || k) END
    FROM p
    CROSS JOIN backup_spec AS s
    CROSS JOIN generate_series(1, p.count) AS k
    CROSS JOIN LATERAL (
        SELECT p.now - (p.count - k + 1) * p.step AS at,
            p.kept IS NULL OR k > p.count - p.kept AS held
    ) AS t
    WHERE s.name = ANY(CAST(:names AS text[]))
    """
)


def fill(database_url: str, n: int, per_spec: int, big_specs: int, big_backups: int) -> int:
    """Specs and backups straight in SQL; returns the number of backup rows."""
    now = datetime.now(UTC).replace(microsecond=0)
    retention = {
        column.removeprefix("retention_"): value
        for column, value in default_retention_columns().items()
    }
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            # Indexes built once over the filled table, not row by row (several times
            # faster); the definitions are the database's own, as migrated.
            indexes = list(conn.execute(_PLAIN_INDEXES).all())
            for name, _ in indexes:
                conn.execute(text("DROP INDEX " + conn.dialect.identifier_preparer.quote(name)))
            conn.execute(_SPECS, {"now": now, "n": n, **retention})
            bigs = ["bench-big"] + [f"bench-big-all-{i:02d}" for i in range(big_specs - 1)]
            for name in bigs:
                conn.execute(_BIG_SPEC, {"name": name, "now": now, **retention})
        names = [f"bench-spec-{i:06d}" for i in range(n)]
        for begin in range(0, n, 10_000):
            with engine.begin() as conn:
                conn.execute(
                    _BACKUPS,
                    {
                        "names": names[begin : begin + 10_000],
                        "count": per_spec,
                        "kept": KEPT,
                        "step": timedelta(days=1),
                        "now": now,
                    },
                )
        for name in bigs:
            kept = KEPT if name == "bench-big" else None
            with engine.begin() as conn:
                conn.execute(
                    _BACKUPS,
                    {
                        "names": [name],
                        "count": big_backups,
                        "kept": kept,
                        "step": timedelta(hours=1),
                        "now": now,
                    },
                )
        with engine.begin() as conn:
            for _, definition in indexes:
                conn.execute(text(definition))
    finally:
        engine.dispose()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does on a live database
    return n * per_spec + len(bigs) * big_backups


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


@dataclass(frozen=True)
class Passes:
    idle: list[float]  # seconds, passes that started nothing
    busy: list[tuple[float, int]]  # (seconds, fires started) of the others
    select_one: float  # the floor of an idle pass: one database round trip
    plain_start: float  # the floor of a start: one plain POST /api/workflow, one at a time


def passes(database_url: str, conductor_url: str, count: int, shards: int = 1) -> Passes:
    """`count` rounds of whole passes in this process, one after another; and their floors.

    With `shards` > 1, K is set in the database and a round is one pass of each shard, one
    after another; a round's time is its slowest shard's pass: what it takes when each shard
    runs on a replica of its own (this bench has 2 cores, so they are not run at once).
    """
    settings = Settings.from_env({"DATABASE_URL": database_url, "CONDUCTOR_API_URL": conductor_url})
    services = Services.from_settings(settings)
    with services.db.begin() as session:
        session.execute(update(SchedulerState).values(tick_shards=shards))
    try:
        idle: list[float] = []
        busy: list[tuple[float, int]] = []
        for _ in range(count):
            slowest, started = 0.0, 0
            for shard in range(shards):
                began = time.perf_counter()
                report = run_tick(services, holder=f"bench:scale:{shard}", shard=shard)
                slowest = max(slowest, time.perf_counter() - began)
                if not report.ran:
                    raise RuntimeError(
                        "a pass lease was held: is a worker running on this database?"
                    )
                started += report.started
            if started:
                busy.append((slowest, started))
            else:
                idle.append(slowest)
        floor = []
        for _ in range(count):
            began = time.perf_counter()
            with services.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            floor.append(time.perf_counter() - began)
        plain = plain_starts(conductor_url, 10, 1) / 10
        return Passes(sorted(idle), busy, statistics.median(floor), plain)
    finally:
        services.close()


def pass_line(found: Passes) -> str:
    line = f"passes x{len(found.idle) + len(found.busy)}: "
    if found.idle:
        p50 = percentile(found.idle, 0.5)
        line += (
            f"{len(found.idle)} started nothing: p50 {ms(p50)}, p99 "
            f"{ms(percentile(found.idle, 0.99))} (floor, SELECT 1: {ms(found.select_one)}, "
            f"ratio {p50 / found.select_one:,.0f}x); "
        )
    if found.busy:
        starts = sum(n for _, n in found.busy)
        per_start = sum(t for t, _ in found.busy) / starts
        line += (
            f"{len(found.busy)} started {starts} fires: p50 "
            f"{ms(percentile(sorted(t for t, _ in found.busy), 0.5))} a pass, "
            f"{ms(per_start)} a start (floor, one plain start: {ms(found.plain_start)}, "
            f"ratio {per_start / found.plain_start:.2f})"
        )
    return line


def retention_run(database_url: str, name: str) -> tuple[float, float, int]:
    """A retention run of spec `name`, as every backup of it makes one: the second, after
    a first (committed) has stored the tags the fill left out; itself rolled back. Its
    time, sorted()'s over the same candidates' times, and the number of candidates."""
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    named = select(BackupSpec).where(BackupSpec.name == name)
    try:
        with sessions() as session:
            apply_plan(session, session.scalars(named).one(), datetime.now(UTC), 100)
            session.commit()
        with sessions() as session:
            spec = session.scalars(named).one()
            began = time.perf_counter()
            apply_plan(session, spec, datetime.now(UTC), 100)
            spent = time.perf_counter() - began
            session.rollback()
            times = [r.time for r in completed_records(session, spec.id)]
        times.reverse()
        began = time.perf_counter()
        sorted(times)
        return spent, time.perf_counter() - began, len(times)
    finally:
        engine.dispose()


def api(database_url: str, n: int, per_spec: int, requests: int) -> str:
    """bench/api_reads.py on the filled database: its table."""
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "api_reads.py"),
            "--database-url",
            database_url,
            "--no-fill",
            "--specs",
            str(n),
            "--backups",
            str(per_spec),
            "--requests",
            str(requests),
            "--heavy-requests",
            str(max(20, requests // 10)),
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"api_reads failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout[done.stdout.find("|") :].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--backups-per-spec", type=int, default=90)
    parser.add_argument("--big-specs", type=int, default=10)
    parser.add_argument("--big-backups", type=int, default=100_000)
    parser.add_argument("--herd", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--api-requests", type=int, default=400)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["herd", "api", "metrics"])
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"{os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with conductor() as conductor_url:
        register_definitions(ConductorClient(conductor_url))
        warm_up(conductor_url)
        for n in args.sizes:
            database_url, admin = create_postgres_database()
            try:
                upgrade_to_head(database_url)
                began = time.perf_counter()
                rows = fill(
                    database_url, n, args.backups_per_spec, args.big_specs, args.big_backups
                )
                print(
                    f"\n## {n:,} specs, {rows:,} backups (filled in "
                    f"{time.perf_counter() - began:.0f} s)"
                )
                for shards in args.shards:
                    found = passes(database_url, conductor_url, args.passes, shards)
                    print(f"K={shards} " + pass_line(found))
                for name in ("bench-big", "bench-big-all-00"):
                    took, sort, count = retention_run(database_url, name)
                    print(
                        f"retention run of {name} ({count:,} candidates of "
                        f"{args.big_backups:,} backups): {ms(took)}; sorted() {sort * 1e6:,.0f}"
                        f" us, ratio {took / sort if sort else float('inf'):,.0f}x"
                    )
                if "herd" not in args.skip:
                    for size in args.herd:
                        plain = plain_starts(conductor_url, size, 8)
                        herd = herd_starts(conductor_url, database_url, size, logs)
                        rss = sum(herd.rss.values()) / 1024
                        print(
                            f"herd of {size:,}: last start {herd.last_start:.2f} s after the "
                            f"due second; plain 8-way starts {plain:.2f} s; ratio "
                            f"{herd.last_start / plain:.2f}; lag p50 "
                            f"{percentile(herd.lags, 0.5):.2f} s, p99 "
                            f"{percentile(herd.lags, 0.99):.2f} s; worker RSS {rss:.0f} MB "
                            f"over {len(herd.rss)} processes"
                        )
                if "api" not in args.skip:
                    print(api(database_url, n, args.backups_per_spec, args.api_requests))
                if "metrics" not in args.skip:
                    for mode in ("per-spec", "aggregated"):
                        found = scrape(database_url, n, mode, args.scrapes)
                        print(
                            f"/metrics {mode}: {found.series:,} series, "
                            f"{found.size / 1e6:.2f} MB, warm median "
                            f"{ms(statistics.median(found.warm))}"
                        )
            finally:
                drop_postgres_database(database_url, admin)
    print(f"\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
