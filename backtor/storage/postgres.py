"""The postgres kind: `pg_dump --format=custom` of one database into the target.

The password never appears on a command line (other users can read that): pg_dump and
pg_restore get the DSN without it, and the password through PGPASSWORD in their
environment. Every pg_dump failure is retryable: a database that is down and one that
refuses the login look alike from here, and Conductor's retry count bounds the cost.

The dump is taken in a snapshot Backtor exports (pg_dump --snapshot), and the rows of every
table are counted in that same snapshot, so the counts `backup` outputs are exactly the
dump's: `verify` with deep compares them with a restored copy.

`restore` runs pg_restore in one transaction: it restores everything or nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from backtor.storage.errors import RetryableError, TerminalError
from backtor.storage.output import (
    Budget,
    PendingOutput,
    Restored,
    Taken,
    Verification,
    backup_file_name,
    checksum_account,
    ensure_directory,
    file_checksum,
)
from backtor.storage.paths import AllowedRoots, backup_file
from backtor.storage.task_input import PostgresRestore, VerifyConfig
from backtor.storage.worker_config import Dsn, PostgresConfig, mask

log = logging.getLogger(__name__)

SUFFIX = ".dump"
PG_DUMP = "pg_dump"
PG_RESTORE = "pg_restore"
THROWAWAY_PREFIX = "backtor_verify_"
MAX_DIFFERENCES = 5  # differing tables named in a deep verify's details
CONNECT_TIMEOUT_SECONDS = "10"  # a database that does not answer fails the try, not hangs it
POLL_SECONDS = 0.2
MAX_MESSAGE_CHARS = 600


# The tables whose rows a dump holds: ordinary tables (partitions included) outside the
# system schemas, neither temporary nor an extension's own. Keyed "schema.table", each part
# quoted only where SQL needs it.
TABLES = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
       n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""

# What makes a database "not empty" for restore: any relation of its own (table, view,
# materialized view, foreign table, sequence) outside the system schemas and extensions.
RELATIONS = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
       pg_catalog.count(*) OVER ()
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
LIMIT 3
"""


def pg_dump_available() -> bool:
    return shutil.which(PG_DUMP) is not None


def pg_restore_available() -> bool:
    return shutil.which(PG_RESTORE) is not None


def pg_dump_command(config: PostgresConfig, output: Path, snapshot: str | None = None) -> list[str]:
    """pg_dump's argument list: no password in it, never a prompt."""
    command = [
        PG_DUMP,
        "--format=custom",
        "--no-password",
        f"--file={output}",
        f"--dbname={config.conninfo_without_password()}",
    ]
    if snapshot is not None:
        command.insert(3, f"--snapshot={snapshot}")
    return command


def pg_restore_command(restore: PostgresRestore, dump: Path) -> list[str]:
    """pg_restore's argument list for `restore`: one transaction, no password, no prompt."""
    command = [PG_RESTORE, "--no-password", "--single-transaction", "--exit-on-error"]
    if restore.overwrite:
        command += ["--clean", "--if-exists"]
    if not restore.keep_owners:
        command += ["--no-owner", "--no-privileges"]
    return [*command, f"--dbname={restore.database.conninfo_without_password()}", str(dump)]


def pg_dump_environment(config: PostgresConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment plus the DSN's password (PGPASSWORD) and a connect timeout."""
    return client_environment(config.database, base)


def client_environment(dsn: Dsn | None, base: Mapping[str, str]) -> dict[str, str]:
    """`base` plus the DSN's password (PGPASSWORD) and a connect timeout, for a client tool."""
    env = dict(base)
    password = dsn.password() if dsn is not None else None
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
    with (
        PendingOutput(target, name) as output,
        tempfile.TemporaryFile() as errors,
        _snapshot(config) as snapshot,
    ):
        code = _run(
            pg_dump_command(config, output.path, snapshot.id if snapshot else None),
            pg_dump_environment(config, environ),
            errors,
            budget,
        )
        if code != 0:
            raise RetryableError(
                mask(
                    f"pg_dump of {config.describe()} failed (exit {code}): {_words(errors)}",
                    config.secrets(),
                )
            )
        counts = snapshot.count_rows(budget) if snapshot else None
        budget.confirm()
        checksum = file_checksum(output.path, budget)
        size = output.publish()
    return Taken(name, size, checksum, counts)


@dataclass(frozen=True)
class _Snapshot:
    """A transaction that exported its snapshot for pg_dump, open while the dump runs."""

    connection: psycopg.Connection[Any]
    id: str
    config: PostgresConfig

    def count_rows(self, budget: Budget) -> dict[str, int] | None:
        """Rows per table in the dump's snapshot; None (logged) when they cannot be counted."""
        try:
            return count_rows(self.connection, budget)
        except psycopg.Error as exc:
            _not_counted(self.config, "cannot count them", exc)
            return None


@contextlib.contextmanager
def _snapshot(config: PostgresConfig) -> Iterator[_Snapshot | None]:
    """An exported snapshot, or None (logged): pg_dump then runs on its own, as before, and
    reports the failure if the database cannot be reached."""
    try:
        connection = psycopg.connect(config.dsn, connect_timeout=int(CONNECT_TIMEOUT_SECONDS))
    except psycopg.Error as exc:
        _not_counted(config, "cannot connect", exc)
        yield None
        return
    with contextlib.closing(connection):
        yield _export_snapshot(connection, config)


def _export_snapshot(
    connection: psycopg.Connection[Any], config: PostgresConfig
) -> _Snapshot | None:
    try:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        connection.execute("SET LOCAL row_security = off")  # as pg_dump: refuse, not filter
        row = connection.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
    except psycopg.Error as exc:
        _not_counted(config, "cannot export a snapshot", exc)
        return None
    return _Snapshot(connection, str(row[0]), config) if row else None


def _not_counted(config: PostgresConfig, why: str, exc: Exception) -> None:
    log.warning(
        "row counts of %s not recorded: %s: %s",
        config.describe(),
        why,
        mask(_one_line(str(exc)), config.secrets()),
    )


def count_rows(connection: psycopg.Connection[Any], budget: Budget) -> dict[str, int]:
    """Rows of each table a dump holds ("schema.table": rows), each table's own (ONLY)."""
    counts: dict[str, int] = {}
    with connection.cursor() as cursor:
        tables = cursor.execute(TABLES).fetchall()
        for key, schema, table in tables:
            budget.check()
            query = sql.SQL("SELECT pg_catalog.count(*) FROM ONLY {}").format(
                sql.Identifier(schema, table)
            )
            row = cursor.execute(query).fetchone()
            counts[str(key)] = int(row[0]) if row else 0
    return counts


def verify_backup(
    config: PostgresConfig,
    roots: AllowedRoots,
    data_id: str,
    expected: str | None,
    recorded: Mapping[str, int] | None,
    verify: VerifyConfig,
    budget: Budget,
    environ: Mapping[str, str] | None = None,
) -> Verification:
    """The checksum, `pg_restore --list` (the table of contents), then every data block read
    through pg_restore; with deep, a restore into a throwaway database and its row counts.

    A dump that fails a check is an answer (verified false); a missing one a TerminalError.
    """
    environ = os.environ if environ is None else environ
    store, dump = backup_file(roots, config.target, data_id)
    checksum = _checksum(dump, data_id, store, budget)
    matches, account = checksum_account(expected, checksum)
    if not matches:
        return Verification(False, account, checksum)
    notes = [account]
    plain = client_environment(None, environ)
    with tempfile.TemporaryFile() as listing, tempfile.TemporaryFile() as errors:
        code = _run([PG_RESTORE, "--list", str(dump)], plain, errors, budget, listing)
        if code != 0:
            details = f"pg_restore --list cannot read it (exit {code}): {_words(errors)}"
            return Verification(False, details, checksum)
        listing.seek(0)
        entries = sum(1 for line in listing if line.strip() and not line.startswith(b";"))
    notes.append(f"pg_restore --list read {entries} entries")
    with tempfile.TemporaryFile() as errors:
        code = _run([PG_RESTORE, f"--file={os.devnull}", str(dump)], plain, errors, budget)
        if code != 0:
            details = f"pg_restore cannot read all of its data (exit {code}): {_words(errors)}"
            return Verification(False, details, checksum)
    notes.append("every data block read back")
    if verify.deep:
        server = verify.server or config.database
        secrets = (*config.secrets(), *verify.secrets())
        verified, found = _deep(server, dump, recorded, environ, budget)
        if not verified:
            return Verification(False, mask(found, secrets), checksum)
        notes.append(mask(found, secrets))
    return Verification(True, "; ".join(notes), checksum)


def _deep(
    server: Dsn,
    dump: Path,
    recorded: Mapping[str, int] | None,
    environ: Mapping[str, str],
    budget: Budget,
) -> tuple[bool, str]:
    """Restore into a throwaway database on `server`, count its rows, drop it."""
    name = f"{THROWAWAY_PREFIX}{uuid.uuid4().hex[:12]}"
    where = server.describe(name)
    try:
        admin = psycopg.connect(
            server.value, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_SECONDS)
        )
    except psycopg.Error as exc:
        raise RetryableError(
            f"deep verify cannot connect to {server.describe()}: {_one_line(str(exc))}"
        ) from None
    with contextlib.closing(admin):
        try:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise TerminalError(
                f"deep verify needs a role that may create databases on {server.describe()} "
                f"(CREATEDB), or a verifyConfig dsn of one: {_one_line(str(exc))}"
            ) from None
        except psycopg.Error as exc:
            raise RetryableError(
                f"deep verify cannot create a database on {server.describe()}: "
                f"{_one_line(str(exc))}"
            ) from None
        try:
            command = [
                PG_RESTORE,
                "--no-password",
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
                f"--dbname={server.conninfo_without_password(dbname=name)}",
                str(dump),
            ]
            with tempfile.TemporaryFile() as errors:
                code = _run(command, client_environment(server, environ), errors, budget)
                if code != 0:
                    return False, (
                        f"deep: pg_restore into a throwaway database failed (exit {code}): "
                        f"{_words(errors)}"
                    )
            try:
                with psycopg.connect(
                    server.conninfo(dbname=name), connect_timeout=int(CONNECT_TIMEOUT_SECONDS)
                ) as restored:
                    counts = count_rows(restored, budget)
            except psycopg.Error as exc:
                raise RetryableError(
                    f"deep verify cannot count the rows restored in {where}: {_one_line(str(exc))}"
                ) from None
        finally:
            _drop(admin, name, where)
    return compare_row_counts(recorded, counts)


def _drop(admin: psycopg.Connection[Any], name: str, where: str) -> None:
    """A plain DROP first: it stops an autovacuum worker visiting the restored tables, which
    FORCE refuses to (a role that may not signal the server's own processes: seen in CI, the
    database was left behind); FORCE then, for a session still connected."""
    problem: psycopg.Error | None = None
    for statement in ("DROP DATABASE IF EXISTS {}", "DROP DATABASE IF EXISTS {} WITH (FORCE)"):
        try:
            admin.execute(sql.SQL(statement).format(sql.Identifier(name)))
            return
        except psycopg.Error as exc:
            problem = exc
    log.warning(
        "the throwaway database %s could not be dropped (%s): drop it by hand",
        where,
        _one_line(str(problem)),
    )


def compare_row_counts(
    recorded: Mapping[str, int] | None, restored: Mapping[str, int]
) -> tuple[bool, str]:
    """Whether the restored tables hold the rows recorded at backup time, and a phrase."""
    if recorded is None:
        return True, (
            f"deep: restored {len(restored)} tables into a throwaway database; no row counts "
            "recorded at backup time to compare"
        )
    differences: list[str] = []
    for table in sorted(recorded.keys() | restored.keys()):
        before, after = recorded.get(table), restored.get(table)
        if before is None:
            differences.append(f"{table} restored ({after} rows) but not recorded at backup time")
        elif after is None:
            differences.append(f"{table} missing after restore ({before} rows at backup time)")
        elif before != after:
            differences.append(f"{table}: {before} rows at backup time, {after} restored")
    if differences:
        shown = "; ".join(differences[:MAX_DIFFERENCES])
        more = len(differences) - MAX_DIFFERENCES
        return False, "deep: row counts differ: " + shown + (f"; {more} more" if more > 0 else "")
    return True, (
        f"deep: restored into a throwaway database, the row counts of all {len(recorded)} "
        "tables match"
    )


def restore_backup(
    config: PostgresConfig,
    restore: PostgresRestore,
    roots: AllowedRoots,
    data_id: str,
    expected: str | None,
    budget: Budget,
    environ: Mapping[str, str] | None = None,
) -> Restored:
    """pg_restore the dump into restoreConfig's database, in one transaction.

    Refused before anything is written: a dump whose checksum or table of contents is wrong,
    a database that cannot be reached, one that already holds relations (without
    overwrite). A pg_restore that fails rolls back: the database is left as it was.
    """
    environ = os.environ if environ is None else environ
    secrets = (*config.secrets(), *restore.secrets())
    database = restore.database
    shown = database.describe()
    store, dump = backup_file(roots, config.target, data_id)
    checksum = _checksum(dump, data_id, store, budget)
    matches, account = checksum_account(expected, checksum)
    if not matches:
        raise TerminalError(f"backup {data_id} cannot be restored: {account}; nothing was restored")
    with tempfile.TemporaryFile() as errors:
        code = _run(
            [PG_RESTORE, "--list", str(dump)], client_environment(None, environ), errors, budget
        )
        if code != 0:
            raise TerminalError(
                f"backup {data_id} cannot be restored: pg_restore --list cannot read it "
                f"(exit {code}): {_words(errors)}; nothing was restored"
            )
    try:
        with psycopg.connect(
            database.value, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_SECONDS)
        ) as connection:
            relations = connection.execute(RELATIONS).fetchall()
    except psycopg.Error as exc:
        raise TerminalError(
            mask(
                f"cannot connect to the restoreConfig database {shown}: {_one_line(str(exc))}; "
                "nothing was restored",
                secrets,
            )
        ) from None
    if relations and not restore.overwrite:
        names = ", ".join(str(row[0]) for row in relations)
        raise TerminalError(
            f"the restoreConfig database {shown} is not empty: it holds {relations[0][1]} "
            f"relation(s) ({names}...). Restore into an empty database, or set "
            '"overwrite": true to drop and recreate the objects the dump holds'
        )
    with tempfile.TemporaryFile() as errors:
        code = _run(
            pg_restore_command(restore, dump), client_environment(database, environ), errors, budget
        )
        if code != 0:
            raise TerminalError(
                mask(
                    f"pg_restore into {shown} failed (exit {code}) and was rolled back, the "
                    f"database is as it was: {_words(errors)}",
                    secrets,
                )
            )
    return Restored(shown, bool(relations), checksum)


def _checksum(dump: Path, data_id: str, store: Path, budget: Budget) -> str:
    try:
        return file_checksum(dump, budget)
    except FileNotFoundError:
        raise TerminalError(f"backup file {data_id} not found in {store}") from None
    except OSError as exc:
        raise RetryableError(f"cannot read {data_id} in {store}: {exc.strerror}") from None


def _run(
    command: list[str],
    env: dict[str, str],
    errors: IO[bytes],
    budget: Budget,
    output: IO[bytes] | None = None,
) -> int:
    """The tool's exit status; killed at once when the budget runs out or the worker stops."""
    try:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if output is None else output,
            stderr=errors,
            start_new_session=True,  # a Ctrl-C reaches the worker, which decides
        )
    except FileNotFoundError:
        raise RetryableError(
            f"{command[0]} is not installed on this storage worker's host "
            "(Debian: postgresql-client)"
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


def _words(errors: IO[bytes]) -> str:
    """A tool's error output, from the start of `errors`, on one line."""
    errors.seek(0)
    return _last_words(errors.read().decode("utf-8", errors="replace"))


def _last_words(text: str) -> str:
    """A tool's error output on one line, its end kept when long."""
    line = re.sub(r"\s+", " ", text).strip() or "no error output"
    return line if len(line) <= MAX_MESSAGE_CHARS else "..." + line[-MAX_MESSAGE_CHARS:]


def _one_line(text: str) -> str:
    return _last_words(text)
