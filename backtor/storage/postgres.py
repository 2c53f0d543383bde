"""The postgres kind: `pg_dump --format=custom` of one database into the target.

The password never appears on pg_dump's command line (other users can read that): pg_dump
gets the DSN without it, and the password through PGPASSWORD in its environment. Restore a
dump with `pg_restore --dbname=<database> <file>`. Every pg_dump failure is retryable: a
database that is down and one that refuses the login look alike from here, and Conductor's
retry count bounds the cost.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO

from backtor.storage.errors import RetryableError
from backtor.storage.output import Budget, PendingOutput, Taken, backup_file_name, ensure_directory
from backtor.storage.paths import AllowedRoots
from backtor.storage.worker_config import PostgresConfig, mask

SUFFIX = ".dump"
PG_DUMP = "pg_dump"
CONNECT_TIMEOUT_SECONDS = "10"  # a database that does not answer fails the try, not hangs it
POLL_SECONDS = 0.2
MAX_MESSAGE_CHARS = 600


def pg_dump_available() -> bool:
    return shutil.which(PG_DUMP) is not None


def pg_dump_command(config: PostgresConfig, output: Path) -> list[str]:
    """pg_dump's argument list: no password in it, never a prompt."""
    return [
        PG_DUMP,
        "--format=custom",
        "--no-password",
        f"--file={output}",
        f"--dbname={config.conninfo_without_password()}",
    ]


def pg_dump_environment(config: PostgresConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment plus the DSN's password (PGPASSWORD) and a connect timeout."""
    env = dict(base)
    password = config.password()
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS)
    return env


def take_backup(
    config: PostgresConfig,
    roots: AllowedRoots,
    backup_name: str,
    when: datetime,
    task_id: str,
    budget: Budget,
    environ: Mapping[str, str] | None = None,
) -> Taken:
    """One pg_dump into the target; `environ` (default: this process's) is pg_dump's base.

    The only place Backtor hands its environment on: pg_dump needs PATH, locale and any
    PG* variables the operator set; that is not configuration of Backtor's own.
    """
    environ = os.environ if environ is None else environ
    target = ensure_directory(roots.resolve(config.target, "target"), "target")
    name = backup_file_name(backup_name, when, task_id, SUFFIX)
    with PendingOutput(target, name) as output, tempfile.TemporaryFile() as errors:
        code = _run(
            pg_dump_command(config, output.path),
            pg_dump_environment(config, environ),
            errors,
            budget,
        )
        if code != 0:
            errors.seek(0)
            detail = _last_words(errors.read().decode("utf-8", errors="replace"))
            raise RetryableError(
                mask(
                    f"pg_dump of {config.describe()} failed (exit {code}): {detail}",
                    config.secrets(),
                )
            )
        budget.confirm()
        size = output.publish()
    return Taken(name, size)


def _run(command: list[str], env: dict[str, str], errors: IO[bytes], budget: Budget) -> int:
    """pg_dump's exit status; killed at once when the budget runs out or the worker stops."""
    try:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,  # a Ctrl-C reaches the worker, which decides
        )
    except FileNotFoundError:
        raise RetryableError(
            "pg_dump is not installed on this storage worker's host (Debian: postgresql-client)"
        ) from None
    try:
        while True:
            try:
                return process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                budget.check()
    except BaseException:
        process.kill()
        process.wait()
        raise


def _last_words(text: str) -> str:
    """pg_dump's error output on one line, its end kept when long."""
    line = re.sub(r"\s+", " ", text).strip() or "no error output"
    return line if len(line) <= MAX_MESSAGE_CHARS else "..." + line[-MAX_MESSAGE_CHARS:]
