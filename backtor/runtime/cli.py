"""The `backtor` command: one entry point, each subcommand a thin call into the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backtor.core.errors import SettingError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backtor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="serve the /backup REST API and /metrics")
    api.add_argument("--host", default=None, help="bind address (default 0.0.0.0)")
    api.add_argument("--port", type=int, default=None, help="port (default $PORT or 6000)")

    commands.add_parser("migrate", help="apply database migrations up to head")
    commands.add_parser(
        "worker", help="poll Backtor's Conductor tasks and keep the scheduler tick running"
    )
    commands.add_parser("register", help="register Backtor's Conductor definitions, then exit")
    run = commands.add_parser("run", help="the API and the worker together (a one-box install)")
    run.add_argument("--host", default=None, help="the API's bind address (default 0.0.0.0)")
    run.add_argument("--port", type=int, default=None, help="the API's port (default 6000)")

    storage = commands.add_parser(
        "storage-worker",
        help="serve the storage tasks backup and remove (kinds: filesystem, postgres)",
    )
    storage.add_argument("kinds", nargs="*", metavar="KIND", help="filesystem and/or postgres")
    storage.add_argument("--kind", action="append", default=[], help="a kind to serve (repeat)")
    storage.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="PATH",
        help="a directory sources and targets may lie in (repeat; default $BACKTOR_STORAGE_ROOTS)",
    )
    storage.add_argument(
        "--threads", type=int, default=2, help="tasks of each type run at once (default 2)"
    )

    retention = commands.add_parser("retention", help="retention tools")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    simulate = retention_commands.add_parser(
        "simulate", help="print the retention plan for a list of backups (JSON on stdin)"
    )
    simulate.add_argument("--policy", default="{}", help="JSON object of retention* fields")
    simulate.add_argument("--timezone", default="UTC", help="IANA time zone (default UTC)")
    simulate.add_argument("--input", default=None, help="file of backups (default stdin)")
    simulate.add_argument(
        "--now",
        default=None,
        help="ISO-8601 moment the plan is applied: with removalDelaySeconds in --policy, "
        "each removed backup's expiresAt is this plus the delay",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad setting ends it with status 2 and one line, no traceback.

    A database that cannot be prepared at start (unreachable, a hung migration) ends it
    with status 1 and one line naming the cause: worth a retry, unlike a bad setting.
    """
    from backtor.db.migrate import MigrationLockTimeout
    from backtor.runtime.startup import DatabaseStartError

    args = _build_parser().parse_args(argv)
    try:
        return _run(args)
    except SettingError as exc:
        print(f"backtor {args.command}: {exc}", file=sys.stderr)
        return 2
    except (DatabaseStartError, MigrationLockTimeout) as exc:
        print(f"backtor {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "api":
        from backtor.api.server import serve

        return serve(host=args.host, port=args.port)
    if args.command == "migrate":
        return _migrate()
    if args.command == "worker":
        return _worker()
    if args.command == "register":
        return _register()
    if args.command == "run":
        from backtor.runtime.supervisor import run_together

        return run_together(host=args.host, port=args.port)
    if args.command == "storage-worker":
        return _storage_worker(args)
    if args.command == "retention" and args.retention_command == "simulate":
        from backtor.core.simulator import run_simulation

        return run_simulation(
            policy=args.policy,
            timezone=args.timezone,
            input_path=args.input,
            now=args.now,
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    raise AssertionError(f"unhandled command {args.command}")


def _migrate() -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from backtor.db.engine import mask_url
    from backtor.db.migrate import upgrade_to_head
    from backtor.runtime.settings import Settings
    from backtor.runtime.startup import DatabaseStartError, describe_driver_error

    settings = Settings.from_env()
    try:
        upgrade_to_head()  # reads the same settings, and sets up logging
    except (SQLAlchemyError, OSError) as error:
        raise DatabaseStartError(
            f"cannot migrate {mask_url(settings.database_url)}: {describe_driver_error(error)}"
        ) from None
    return 0


def _worker() -> int:
    """Migrate when this process should, wait for a schema at head, then poll.

    Waiting (not exiting) when the schema is behind: replicas started before the
    operator's `backtor migrate` pick up once it ran.
    """
    import signal
    import threading
    from types import FrameType

    from backtor.db.engine import make_engine
    from backtor.observability.logs import configure_logging
    from backtor.runtime.settings import Settings
    from backtor.runtime.startup import prepare_database, wait_for_schema
    from backtor.workers.runner import run_worker

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    prepare_database(settings)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    engine = make_engine(settings.database_url)
    try:
        if not wait_for_schema(engine, stop):
            return 0
    finally:
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return run_worker(settings)


def _storage_worker(args: argparse.Namespace) -> int:
    from backtor.runtime.settings import Settings
    from backtor.storage.worker import run_storage_worker, storage_settings

    try:
        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        settings = Settings.from_env()
        kinds = [*args.kinds, *args.kind]
        storage = storage_settings(kinds, args.allow_root, settings.storage_roots)
    except ValueError as exc:  # SettingError included
        print(f"backtor storage-worker: {exc}", file=sys.stderr)
        return 2
    return run_storage_worker(storage, settings, args.threads)


def _register() -> int:
    from backtor.conductor.http import ConductorClient
    from backtor.conductor.registration import register_definitions
    from backtor.core.errors import ConductorRefused, ConductorUnavailable
    from backtor.runtime.settings import Settings

    settings = Settings.from_env()
    try:
        report = register_definitions(ConductorClient(settings.conductor_api_url))
    except (ConductorUnavailable, ConductorRefused) as exc:
        print(f"backtor register: {exc}", file=sys.stderr)
        return 1
    for label in report.created:
        print(f"created   {label}")
    for label in report.updated:
        print(f"updated   {label}")
    for label in report.unchanged:
        print(f"unchanged {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
