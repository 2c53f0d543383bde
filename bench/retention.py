"""Benchmark plan_retention against sorted() on the same records, 10^3 .. 10^6 backups.

Run: .venv/bin/python bench/retention.py [--max-exponent 6] [--order shuffled|chronological|both]

One backup every 10 minutes in Europe/Berlin (so DST changes are crossed), the
default policy plus 24 hourly; 1% failed, 0.1% pinned. ``sorted`` sorts the same
list by (time, id): the least any plan must do. The ratio column is plan / sorted;
the last column is plan seconds / (n log2 n), scaled to 1.0 at the smallest n, so a
flat column means n log n growth. The bar: 10^5 backups under 0.5 s, and at 10^6
at most 10x sorted() on shuffled input. On input already in time order sorted()
degenerates to one linear pass (Timsort), so that table shows the fixed per-backup
cost of the plan instead.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from backtor.policy import RetentionPolicy
from backtor.retention import BackupRecord, plan_retention

ZONE = ZoneInfo("Europe/Berlin")
POLICY = RetentionPolicy.from_fields({"retentionHourly": "24"})
START = datetime(2001, 1, 1, tzinfo=UTC)


def history(n: int, order: str) -> list[BackupRecord]:
    """n backups 10 minutes apart; ids are the database's integer ids, as strings."""
    step = timedelta(minutes=10)
    rng = random.Random(n)
    records = [
        BackupRecord(
            str(i + 1),
            START + i * step,
            status="COMPLETED" if rng.random() > 0.01 else "FAILED",
            pinned=rng.random() < 0.001,
        )
        for i in range(n)
    ]
    if order == "shuffled":
        rng.shuffle(records)
    return records


def best_of(runs: int, action: Callable[[], object]) -> float:
    best = math.inf
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def table(order: str, max_exponent: int) -> None:
    print(f"order={order} zone={ZONE.key} policy={POLICY.to_fields()}")
    print(f"{'n':>9} {'plan s':>9} {'sorted s':>9} {'ratio':>6} {'plan/(n log n)':>15}")
    baseline = None
    for exponent in range(3, max_exponent + 1):
        n = 10**exponent
        records = history(n, order)
        runs = 5 if n <= 10**5 else 2

        def plan(records: list[BackupRecord] = records) -> object:
            return plan_retention(records, POLICY, ZONE)

        def sort(records: list[BackupRecord] = records) -> object:
            return sorted(records, key=lambda b: (b.time, b.id))

        plan_seconds = best_of(runs, plan)
        sort_seconds = best_of(runs, sort)
        per_nlogn = plan_seconds / (n * math.log2(n))
        baseline = baseline or per_nlogn
        print(
            f"{n:>9} {plan_seconds:>9.3f} {sort_seconds:>9.3f} "
            f"{plan_seconds / sort_seconds:>6.1f} {per_nlogn / baseline:>15.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-exponent", type=int, default=6)
    parser.add_argument("--order", choices=["shuffled", "chronological", "both"], default="both")
    args = parser.parse_args()
    for order in ["shuffled", "chronological"] if args.order == "both" else [args.order]:
        table(order, args.max_exponent)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
