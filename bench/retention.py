"""Benchmark plan_retention against sorted() on the same records, 10^3 .. 10^6 backups.

Run: .venv/bin/python bench/retention.py [--max-exponent 6] [--order shuffled|chronological|both]

One backup every 10 minutes in Europe/Berlin (so DST changes are crossed), the
default policy plus 24 hourly; 1% failed, 0.1% pinned. ``sorted`` sorts the same
list by (time, id). The ratio column is plan / sorted; the last column is plan
seconds / (n log2 n), scaled to 1.0 at the smallest n, so a flat column means
n log n growth.

The floor is sorted() on shuffled input: the plan's input comes from the database
in no particular order, and ordering it by time is the least any plan must do. On
input already in time order sorted() is one linear pass (Timsort finds a single
run), so that table's ratio is the plan's per-backup work (times, wall clock, one
result object per backup) against one pass, not against a floor; its "vs floor"
column compares the same plan with sorted() on the shuffled list. The bar: 10^5
backups under 0.5 s, and at 10^6 at most 10x the floor.
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

from backtor.core.policy import RetentionPolicy
from backtor.core.retention import BackupRecord, plan_retention

ZONE = ZoneInfo("Europe/Berlin")
POLICY = RetentionPolicy.from_fields({"retentionHourly": "24"})
START = datetime(2001, 1, 1, tzinfo=UTC)
ORDERS = ("shuffled", "chronological")
FLOOR = "shuffled"
BAR_SECONDS_AT_10_5 = 0.5
BAR_RATIO_AT_10_6 = 10.0


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


def measure(order: str, n: int) -> tuple[float, float]:
    """(plan seconds, sorted seconds), each the best of a few runs on the same list."""
    records = history(n, order)
    runs = 5 if n <= 10**5 else 2
    plan_seconds = best_of(runs, lambda: plan_retention(records, POLICY, ZONE))
    sort_seconds = best_of(runs, lambda: sorted(records, key=lambda b: (b.time, b.id)))
    return plan_seconds, sort_seconds


def table(order: str, rows: dict[int, tuple[float, float]], floor: dict[int, float]) -> None:
    role = "the floor" if order == FLOOR else "sorted() is linear here: not a floor"
    print(f"order={order} ({role}) zone={ZONE.key} policy={POLICY.to_fields()}")
    extra = f" {'vs floor':>9}" if order != FLOOR and floor else ""
    print(f"{'n':>9} {'plan s':>9} {'sorted s':>9} {'ratio':>6} {'plan/(n log n)':>15}{extra}")
    baseline = None
    for n, (plan_seconds, sort_seconds) in rows.items():
        per_nlogn = plan_seconds / (n * math.log2(n))
        baseline = baseline or per_nlogn
        line = (
            f"{n:>9} {plan_seconds:>9.3f} {sort_seconds:>9.3f} "
            f"{plan_seconds / sort_seconds:>6.1f} {per_nlogn / baseline:>15.2f}"
        )
        if extra and n in floor:
            line += f" {plan_seconds / floor[n]:>9.1f}"
        print(line)
    print()


def verdict(results: dict[str, dict[int, tuple[float, float]]]) -> None:
    """The issue's bars, against the floor (sorted() on shuffled input)."""
    floor = {n: sort for n, (_, sort) in results.get(FLOOR, {}).items()}
    for order, rows in results.items():
        if 10**5 in rows:
            seconds = rows[10**5][0]
            ok = "met" if seconds < BAR_SECONDS_AT_10_5 else "NOT met"
            print(f"{order}: 10^5 planned in {seconds:.3f} s (bar < {BAR_SECONDS_AT_10_5} s): {ok}")
        if 10**6 in rows and 10**6 in floor:
            ratio = rows[10**6][0] / floor[10**6]
            ok = "met" if ratio <= BAR_RATIO_AT_10_6 else "NOT met"
            print(f"{order}: 10^6 at {ratio:.1f}x the floor (bar <= {BAR_RATIO_AT_10_6:g}x): {ok}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-exponent", type=int, default=6)
    parser.add_argument("--order", choices=[*ORDERS, "both"], default="both")
    args = parser.parse_args()
    orders = ORDERS if args.order == "both" else (args.order,)
    sizes = [10**exponent for exponent in range(3, args.max_exponent + 1)]
    results = {order: {n: measure(order, n) for n in sizes} for order in orders}
    floor = {n: sort for n, (_, sort) in results.get(FLOOR, {}).items()}
    for order in orders:
        table(order, results[order], floor)
    verdict(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
