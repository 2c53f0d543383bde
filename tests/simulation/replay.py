"""Replay one seed: `.venv/bin/python -m tests.simulation.replay SEED [--trace] [--minimise]`.

Prints the scenario, its failures and, with --trace, every step in simulated time.
--set KEY=VALUE changes the scenario (as the minimiser prints it); --minimise looks for a
smaller variant that fails the same way and prints its replay command. Exit status 1 when
an invariant fails.
"""

from __future__ import annotations

import argparse
import ast
import sys

from tests.simulation.minimise import minimise
from tests.simulation.runner import Overrides, replay_command, run_seed


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, ast.literal_eval(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation.replay")
    parser.add_argument("seed", type=int)
    parser.add_argument("--trace", action="store_true", help="print every simulated step")
    parser.add_argument("--set", type=_override, action="append", default=[], metavar="K=V")
    parser.add_argument("--minimise", action="store_true", help="shrink a failing scenario")
    args = parser.parse_args(argv)
    overrides: Overrides = dict(args.set)
    if args.minimise:
        found, _ = minimise(args.seed)
        overrides = {**found, **overrides}
        print(f"minimised: {replay_command(args.seed, overrides)}")
    result = run_seed(args.seed, verbose=args.trace, overrides=overrides)
    print(result.scenario.describe())
    if args.trace:
        for ms, who, what in result.trace:
            print(f"{ms / 1000:9.3f}s {who:>24}  {what}")
    print(f"stats: {result.stats}")
    if result.failures:
        print(f"{len(result.failures)} failure(s); replay: {replay_command(args.seed, overrides)}")
        print("\n".join(f"  {failure}" for failure in result.failures))
    else:
        print(f"seed {args.seed}: ok")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
