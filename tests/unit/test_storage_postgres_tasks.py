"""The postgres kind's `backup` outputs, `verify` and `restore`, on a real PostgreSQL.

The task functions run in process (no Conductor); pg_dump and pg_restore are the real ones.
Marked integration (so needs_server): `scripts/test --fast` leaves these out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from backtor.conductor.payloads import TaskRun, TaskStatus, from_epoch_ms
from backtor.conductor.results import TaskOutcome
from backtor.storage import postgres
from backtor.storage.paths import AllowedRoots
from backtor.storage.worker import (
    StorageWorkerSettings,
    backup_task,
    restore_task,
    verify_task,
)
from backtor.storage.worker_config import Dsn, mask

pytestmark = pytest.mark.integration

PASSWORD = "n0t-the-Real-0ne"
UNREACHABLE = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/orders"

SCHEMA = """
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);
INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 100) g;
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Odd Table" (v int);
INSERT INTO "My Schema"."Odd Table" VALUES (1), (2);
CREATE TABLE measures (at int) PARTITION BY RANGE (at);
CREATE TABLE measures_low PARTITION OF measures FOR VALUES FROM (0) TO (10);
INSERT INTO measures VALUES (1), (2), (3);
CREATE UNLOGGED TABLE scratch (v text);
INSERT INTO scratch VALUES ('kept');
CREATE TABLE empty_one (v int);
"""
COUNTS = {
    '"My Schema"."Odd Table"': 2,
    "public.empty_one": 0,
    "public.measures_low": 3,
    "public.orders": 100,
    "public.scratch": 1,
}


def plain(url: str) -> str:
    """A libpq DSN from the fixture's SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def database(make_postgres_database: Callable[[], str]) -> Callable[[], str]:
    return lambda: plain(make_postgres_database())


@pytest.fixture
def source(database: Callable[[], str]) -> str:
    dsn = database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return dsn


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def served(root: Path) -> StorageWorkerSettings:
    return StorageWorkerSettings(("postgres",), AllowedRoots.from_paths([str(root)]))


def task(dsn: str, root: Path, **more: Any) -> TaskRun:
    config = {"kind": "postgres", "dsn": dsn, "target": str(root / "dumps")}
    return TaskRun(
        task_id="task-1",
        task_type="backup",
        reference_name="backup",
        status=TaskStatus.IN_PROGRESS,
        workflow_id="wf-1",
        input={"backupName": "orders", "workerConfig": json.dumps(config), **more},
        scheduled_time=from_epoch_ms(1),
    )


def backed_up(source: str, root: Path) -> dict[str, Any]:
    taken = backup_task(served(root), task(source, root))
    assert taken.status == "COMPLETED", taken.reason
    return dict(taken.output)


def rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the test schema's tables, sorted."""
    tables = [("My Schema", "Odd Table"), ("public", "orders"), ("public", "measures")]
    tables += [("public", "scratch"), ("public", "empty_one")]
    with psycopg.connect(dsn) as conn:
        return {
            ".".join(table): sorted(
                conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(*table))).fetchall()
            )
            for table in tables
        }


def throwaway_databases(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'backtor\\_verify\\_%'"
        ).fetchall()
    return {name for (name,) in found}


def relations(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def no_secret_in(outcome: TaskOutcome, caplog: pytest.LogCaptureFixture) -> None:
    assert PASSWORD not in json.dumps(dict(outcome.output))
    assert PASSWORD not in (outcome.reason or "")
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]


# -- backup -----------------------------------------------------------------------------------


def test_backup_outputs_the_checksum_and_the_rows_of_its_snapshot(
    source: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = postgres._run

    def insert_then_run(command: list[str], *args: Any, **kwargs: Any) -> int:
        # Rows committed after the snapshot was exported: neither dumped nor counted.
        if command[0] == postgres.PG_DUMP:
            assert any(arg.startswith("--snapshot=") for arg in command)
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute("INSERT INTO orders (item) VALUES ('late')")
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(postgres, "_run", insert_then_run)
    output = backed_up(source, root)
    assert set(output) == {"dataId", "dataSizeMB", "checksum", "rowCounts"}
    dump = root / "dumps" / output["dataId"]
    assert output["checksum"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert output["rowCounts"] == COUNTS
    listing = subprocess.run(
        ["pg_restore", "--file=-", "--data-only", "--table=orders", str(dump)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "item 100" in listing and "late" not in listing


def test_without_a_snapshot_the_backup_still_runs_without_row_counts(
    source: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "_export_snapshot", lambda conn, config: None)
    output = backed_up(source, root)
    assert "rowCounts" not in output and len(output["checksum"]) == 64


# -- verify -----------------------------------------------------------------------------------


def test_verify_reads_the_dump_and_deep_compares_restored_rows(source: str, root: Path) -> None:
    output = backed_up(source, root)
    before = throwaway_databases(source)
    recorded = {"checksum": output["checksum"], "rowCounts": output["rowCounts"]}
    plain_check = verify_task(served(root), task(source, root, dataId=output["dataId"], **recorded))
    assert plain_check.status == "COMPLETED", plain_check.reason
    assert plain_check.output["verified"] is True
    assert plain_check.output["details"].startswith(
        "SHA-256 matches the checksum recorded at backup time; pg_restore --list read "
    )
    assert plain_check.output["details"].endswith("entries; every data block read back")

    deep = verify_task(
        served(root),
        task(source, root, dataId=output["dataId"], verifyConfig='{"deep": true}', **recorded),
    )
    assert deep.output["verified"] is True, deep.output["details"]
    assert deep.output["details"].endswith(
        "deep: restored into a throwaway database, the row counts of all 5 tables match"
    )
    assert throwaway_databases(source) == before  # dropped again


def test_deep_verify_names_tables_whose_rows_differ(source: str, root: Path) -> None:
    output = backed_up(source, root)
    before = throwaway_databases(source)
    counts = output["rowCounts"] | {"public.orders": 99}
    answer = verify_task(
        served(root),
        task(
            source,
            root,
            dataId=output["dataId"],
            rowCounts=json.dumps(counts),
            verifyConfig={"deep": True},
        ),
    )
    assert answer.status == "COMPLETED"
    assert answer.output["verified"] is False
    assert answer.output["details"] == (
        "deep: row counts differ: public.orders: 99 rows at backup time, 100 restored"
    )
    assert throwaway_databases(source) == before


def test_deep_verify_without_recorded_counts_says_so(source: str, root: Path) -> None:
    output = backed_up(source, root)
    answer = verify_task(
        served(root), task(source, root, dataId=output["dataId"], verifyConfig={"deep": True})
    )
    assert answer.output["verified"] is True
    assert "no checksum recorded at backup time" in answer.output["details"]
    assert "no row counts recorded at backup time to compare" in answer.output["details"]


def test_a_damaged_dump_fails_verification_with_its_cause(source: str, root: Path) -> None:
    output = backed_up(source, root)
    dump = root / "dumps" / output["dataId"]
    data = dump.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    dump.write_bytes(flipped)
    checked = verify_task(
        served(root), task(source, root, dataId=output["dataId"], checksum=output["checksum"])
    )
    assert checked.output["verified"] is False
    assert "recorded at backup time: the file changed since" in checked.output["details"]

    dump.write_bytes(data[: len(data) * 2 // 3])  # truncated, and no checksum to compare
    truncated = verify_task(served(root), task(source, root, dataId=output["dataId"]))
    assert truncated.status == "COMPLETED"
    assert truncated.output["verified"] is False
    assert "pg_restore" in truncated.output["details"]


def test_verify_of_a_missing_dump_is_a_terminal_error(source: str, root: Path) -> None:
    (root / "dumps").mkdir()
    answer = verify_task(served(root), task(source, root, dataId="orders-1-gone.dump"))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason == f"backup file orders-1-gone.dump not found in {root / 'dumps'}"


def test_deep_verify_on_an_unreachable_server_fails_retryably_and_masked(
    source: str, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = backed_up(source, root)
    caplog.set_level(logging.DEBUG)
    answer = verify_task(
        served(root),
        task(
            source,
            root,
            dataId=output["dataId"],
            verifyConfig=json.dumps({"deep": True, "dsn": UNREACHABLE}),
        ),
    )
    assert answer.status == "FAILED"
    assert answer.reason and "deep verify cannot connect to alice@127.0.0.1:1/orders" in (
        answer.reason
    )
    no_secret_in(answer, caplog)


# -- restore ----------------------------------------------------------------------------------


def restore(dsn: str, root: Path, data_id: str, **config: Any) -> TaskOutcome:
    source_config = "postgresql://unused@127.0.0.1:1/unused"
    return restore_task(
        served(root),
        task(source_config, root, dataId=data_id, restoreConfig=json.dumps({"dsn": dsn} | config)),
    )


def test_a_dump_restores_into_an_empty_database_row_for_row(
    source: str, database: Callable[[], str], root: Path
) -> None:
    output = backed_up(source, root)
    target = database()
    done = restore_task(
        served(root),
        task(
            "postgresql://unused@127.0.0.1:1/unused",
            root,
            dataId=output["dataId"],
            checksum=output["checksum"],
            restoreConfig={"dsn": target},
        ),
    )
    assert done.status == "COMPLETED", done.reason
    assert done.output == {
        "dataId": output["dataId"],
        # Masked like every message (the test server's password is also its user's name).
        "restoredTo": mask(Dsn(target).describe(), Dsn(target).secrets()),
        "replaced": False,
        "checksum": output["checksum"],
    }
    assert rows(target) == rows(source)


def test_a_database_with_tables_is_refused_unless_overwrite(
    source: str, database: Callable[[], str], root: Path
) -> None:
    output = backed_up(source, root)
    target = database()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int, note text); INSERT INTO orders VALUES (7, 'x')")
        conn.execute("CREATE TABLE mine (v int); INSERT INTO mine VALUES (42)")
    refused = restore(target, root, output["dataId"])
    assert refused.status == "FAILED_WITH_TERMINAL_ERROR"
    assert (
        refused.reason
        and "is not empty: it holds 2 relation(s) (public.mine, public.orders" in (refused.reason)
    )
    assert '"overwrite": true' in refused.reason
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT * FROM orders").fetchall() == [(7, "x")]

    replaced = restore(target, root, output["dataId"], overwrite=True)
    assert replaced.status == "COMPLETED", replaced.reason
    assert replaced.output["replaced"] is True
    assert rows(target) == rows(source)
    with psycopg.connect(target) as conn:  # objects the dump does not hold are kept
        assert conn.execute("SELECT v FROM mine").fetchall() == [(42,)]


def test_a_failing_restore_rolls_back_and_leaves_the_database_as_it_was(
    source: str, database: Callable[[], str], root: Path
) -> None:
    output = backed_up(source, root)
    target = database()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (v int); INSERT INTO mine VALUES (42)")
        # A type where the dump creates a table's row type: CREATE TABLE orders fails.
        conn.execute("CREATE TYPE orders AS (x int)")
    before = relations(target)
    answer = restore(target, root, output["dataId"], overwrite=True)
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason and "failed (exit 1) and was rolled back, the database is as it was" in (
        answer.reason
    )
    assert '"orders"' in answer.reason  # pg_restore's own words name the conflict
    assert relations(target) == before
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT v FROM mine").fetchall() == [(42,)]


def test_a_corrupted_dump_is_refused_before_the_database_is_touched(
    source: str, database: Callable[[], str], root: Path
) -> None:
    output = backed_up(source, root)
    dump = root / "dumps" / output["dataId"]
    target = database()
    mismatch = restore_task(
        served(root),
        task(
            source,
            root,
            dataId=output["dataId"],
            checksum="0" * 64,
            restoreConfig={"dsn": target},
        ),
    )
    assert mismatch.status == "FAILED_WITH_TERMINAL_ERROR"
    assert mismatch.reason and "differs from " + "0" * 64 in mismatch.reason
    dump.write_bytes(b"PGDMP" + b"\0" * 10)
    broken = restore(target, root, output["dataId"])
    assert broken.status == "FAILED_WITH_TERMINAL_ERROR"
    assert broken.reason and "pg_restore --list cannot read it" in broken.reason
    assert "nothing was restored" in broken.reason
    assert relations(target) == 0


def test_an_unreachable_database_is_a_terminal_error_without_the_password(
    source: str, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = backed_up(source, root)
    caplog.set_level(logging.DEBUG)
    answer = restore(UNREACHABLE, root, output["dataId"])
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert answer.reason and answer.reason.startswith(
        "cannot connect to the restoreConfig database alice@127.0.0.1:1/orders: "
    )
    assert "Connection refused" in answer.reason and "nothing was restored" in answer.reason
    no_secret_in(answer, caplog)


def test_the_restore_password_reaches_pg_restore_through_its_environment_only(
    source: str, database: Callable[[], str], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = backed_up(source, root)
    target = database()
    password = conninfo_to_dict(target)["password"]
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def recording(command: list[str], **kwargs: Any) -> Any:
        seen.append((list(command), dict(kwargs["env"])))
        return real_popen(command, **kwargs)

    monkeypatch.setattr(postgres.subprocess, "Popen", recording)
    done = restore(target, root, output["dataId"])
    assert done.status == "COMPLETED", done.reason
    restores = [(c, e) for c, e in seen if c[0] == "pg_restore" and any("--dbname" in a for a in c)]
    assert len(restores) == 1
    command, env = restores[0]
    dbname = next(a for a in command if a.startswith("--dbname="))
    assert "password" not in conninfo_to_dict(dbname.removeprefix("--dbname="))
    assert "--single-transaction" in command and "--no-owner" in command
    assert env["PGPASSWORD"] == password


def test_a_database_that_is_down_fails_the_backup_retryably_as_before(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No snapshot can be exported: pg_dump runs on its own and reports the failure."""
    caplog.set_level(logging.DEBUG)
    answer = backup_task(served(root), task(UNREACHABLE, root))
    assert answer.status == "FAILED"
    assert answer.reason and answer.reason.startswith(
        "pg_dump of alice@127.0.0.1:1/orders failed (exit 1): "
    )
    assert "row counts of alice@127.0.0.1:1/orders not recorded: cannot connect" in caplog.text
    no_secret_in(answer, caplog)
    assert list((root / "dumps").iterdir()) == []
