"""Soak the scheduling core in the deterministic simulation (tests/simulation).

Run: .venv/bin/python bench/soak.py --scenarios 100000 --start-seed N [--jobs 2]

Plays seeds N, N+1, ... each a whole scenario (replicas, workers, API, faults, crashes,
then settling and the invariants), prints the rate as it goes, then every failing seed
with its one-line replay command, grouped by the invariant that failed. Exit status 1
when any seed failed. --jobs runs that many processes (the machine has 2 cores, shared).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.simulation.runner import (  # noqa: E402
    forget_process_state,
    replay_command,
    run_seed,
)

Outcome = tuple[int, list[str], float, float]


def _play(seed: int) -> Outcome:
    result = run_seed(seed)
    return seed, result.failures, result.seconds, result.cpu_seconds


def _outcomes(seeds: range, jobs: int) -> Iterator[Outcome]:
    if jobs <= 1:
        yield from map(_play, seeds)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=forget_process_state) as pool:
        yield from pool.imap_unordered(_play, seeds, chunksize=16)


def _kind(failure: str) -> str:
    """A failure's shape: its message with names, ids, times and numbers blanked out."""
    shape = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<wf>", failure)
    shape = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(\+00:00|Z)?", "<time>", shape)
    shape = re.sub(r"\bs\d+(/d\d+)?\b", "<spec>", shape)
    shape = re.sub(r"\[[^\[\]]*<[^\[\]]*\]|\[\d[\d, ]*\]", "<list>", shape)
    shape = re.sub(r"\d+", "#", shape)
    return shape[:160]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--every", type=float, default=10.0, help="progress line every N s")
    args = parser.parse_args(argv)
    seeds = range(args.start_seed, args.start_seed + args.scenarios)
    failed: dict[int, list[str]] = {}
    by_kind: defaultdict[str, list[int]] = defaultdict(list)
    slowest: tuple[float, int] = (0.0, -1)
    started = last = time.perf_counter()
    done = 0
    cpu = 0.0
    for seed, failures, seconds, cpu_seconds in _outcomes(seeds, args.jobs):
        done += 1
        cpu += cpu_seconds
        slowest = max(slowest, (seconds, seed))
        if failures:
            failed[seed] = failures
            for kind in sorted({_kind(f) for f in failures}):
                by_kind[kind].append(seed)
            print(f"FAIL seed {seed}: {failures[0][:200]}  ->  {replay_command(seed)}", flush=True)
        now = time.perf_counter()
        if now - last >= args.every:
            last = now
            rate = done / (now - started)
            print(f"{done} scenarios, {rate:.1f}/s, {len(failed)} failed", flush=True)
    elapsed = time.perf_counter() - started
    print(
        f"\n{done} scenarios in {elapsed:.1f} s: {done / elapsed:.1f} scenarios/s "
        f"({args.jobs} process(es)); {1000 * cpu / max(done, 1):.0f} ms CPU a scenario; "
        f"slowest seed {slowest[1]} took {slowest[0]:.2f} s"
    )
    print(f"{len(failed)} failing seed(s)")
    for kind, kind_seeds in sorted(by_kind.items()):
        shown = ", ".join(str(s) for s in sorted(kind_seeds)[:20])
        more = f" (+{len(kind_seeds) - 20} more)" if len(kind_seeds) > 20 else ""
        print(f"  [{kind}] {len(kind_seeds)}: {shown}{more}")
    for seed in sorted(failed)[:50]:
        print(f"  {replay_command(seed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
