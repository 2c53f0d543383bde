"""The embedded default migrates itself, races included; a schema behind says so, with the command.

Real `backtor` processes, as a new user starts them: no `backtor migrate` first. The SQLite
tests need no server (the fast loop runs them); the PostgreSQL ones are marked.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from backtor.db.engine import make_engine
from backtor.db.migrate import alembic_config, downgrade_to, head_revisions, upgrade_to_head
from tests.support.net import free_port
from tests.support.processes import BACKTOR, start, stop
from tests.support.waiting import wait_until

SPEC = {"name": "first-contact", "workerConfig": '{"kind": "filesystem"}'}


def _head() -> str:
    (head,) = head_revisions()
    return head


def _previous() -> str:
    """The revision before head: what a database one migration behind is at."""
    revision = ScriptDirectory.from_config(alembic_config()).get_revision(_head())
    assert isinstance(revision.down_revision, str)
    return revision.down_revision


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no DATABASE_URL (SQLite under DATA_DIR), Conductor down."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKTOR_API_TOKEN")}
    env.update(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "CONDUCTOR_API_URL": f"http://127.0.0.1:{free_port()}/api",
            "LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@contextmanager
def _api(env: dict[str, str], log: Path) -> Iterator[str]:
    """`backtor api` on a free port; yields its base URL once /health answers."""
    port = free_port()
    process = start(["api", "--host", "127.0.0.1", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, f"backtor api exited:\n{log.read_text()}"
        try:
            return requests.get(f"{base}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=60, what="backtor api's /health")
        yield base
    finally:
        stop(process)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _version_rows(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return [str(v) for v in rows.scalars()]
    finally:
        engine.dispose()


def test_a_fresh_data_dir_serves_post_backup_at_once(tmp_path: Path) -> None:
    """`backtor api` alone on a data directory that does not exist yet: POST /backup is 201."""
    log = tmp_path / "api.log"
    with _api(_env(tmp_path), log) as base:
        created = requests.post(f"{base}/backup", json=SPEC, timeout=30)
        assert created.status_code == 201, created.text
        assert created.headers["Location"] == "/backup/first-contact"
        ready = requests.get(f"{base}/ready", timeout=10)
        assert ready.json() == {"status": "ready", "revision": [_head()]}
    database = tmp_path / "data" / "backtor.db"
    assert database.is_file()
    assert _version_rows(f"sqlite:///{database}") == [_head()]
    said = log.read_text()
    assert f"from an empty schema to {_head()}" in said
    assert "cannot be reached" not in said


def _migrate_together(env: dict[str, str], tmp_path: Path, count: int) -> list[str]:
    """Start `count` `backtor migrate` at once; return each one's output (all must succeed)."""
    logs = [tmp_path / f"migrate-{i}.log" for i in range(count)]
    processes = [start(["migrate"], env, log) for log in logs]
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=120) == 0, log.read_text()
    return [log.read_text() for log in logs]


def test_two_processes_migrating_one_fresh_sqlite_file_both_succeed(tmp_path: Path) -> None:
    """The lock really serialises: both wait on it, then one migrates and one finds it done.

    The test holds the lock first, so both processes are provably inside the race window
    (waiting, nothing migrated) when it lets go; they then contend for the lock at once.
    """
    env = _env(tmp_path)
    database = tmp_path / "data" / "backtor.db"
    database.parent.mkdir(parents=True)
    lock = database.with_name("backtor.db.migrate.lock")
    logs = [tmp_path / f"migrate-{i}.log" for i in range(2)]
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        processes = [start(["migrate"], env, log) for log in logs]
        wait_until(
            lambda: all(
                "waiting for another process's migration" in log.read_text() for log in logs
            ),
            timeout=60,
            what="both processes waiting on the migration lock",
        )
        assert "alembic_version" not in _tables(f"sqlite:///{database}")
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=120) == 0, log.read_text()
    said = [log.read_text() for log in logs]
    # Exactly one ran the revisions; the other found the schema at head under the lock.
    assert sum("Running upgrade  -> 0001" in text for text in said) == 1, said
    assert _version_rows(f"sqlite:///{database}") == [_head()]


def test_api_and_worker_started_together_on_a_fresh_file(tmp_path: Path) -> None:
    """`backtor api` and `backtor worker` at the same moment, no lock held: one migrates."""
    env = _env(tmp_path, BACKTOR_WORKER_HEALTH_PORT="0")
    worker_log = tmp_path / "worker.log"
    worker = start(["worker"], env, worker_log)
    try:
        with _api(env, tmp_path / "api.log") as base:
            assert requests.post(f"{base}/backup", json=SPEC, timeout=30).status_code == 201
            # The worker is past its start once it looks for Conductor (down here).
            wait_until(
                lambda: "Conductor not reachable yet" in worker_log.read_text(),
                timeout=60,
                what="the worker past its migration",
            )
            assert worker.poll() is None, worker_log.read_text()
    finally:
        stop(worker)
    said = [worker_log.read_text(), (tmp_path / "api.log").read_text()]
    assert sum("from an empty schema" in text for text in said) == 1, said
    assert _version_rows(f"sqlite:///{tmp_path / 'data' / 'backtor.db'}") == [_head()]


@pytest.mark.integration
def test_two_processes_migrating_one_fresh_postgres_database_both_succeed(
    postgres_url: str, tmp_path: Path
) -> None:
    """Replicas with BACKTOR_MIGRATE_ON_START=1: the advisory lock makes one wait for the other."""
    env = _env(tmp_path, DATABASE_URL=postgres_url)
    outputs = _migrate_together(env, tmp_path, 3)
    assert sum("Running upgrade  -> 0001" in text for text in outputs) == 1, outputs
    assert _version_rows(postgres_url) == [_head()]


@pytest.mark.integration
def test_postgres_replicas_migrate_on_start_together(postgres_url: str, tmp_path: Path) -> None:
    env = _env(tmp_path, DATABASE_URL=postgres_url, BACKTOR_MIGRATE_ON_START="1")
    with _api(env, tmp_path / "a.log") as first, _api(env, tmp_path / "b.log") as second:
        for base in (first, second):
            assert requests.get(f"{base}/ready", timeout=10).status_code == 200
        assert requests.post(f"{first}/backup", json=SPEC, timeout=30).status_code == 201
        assert requests.get(f"{second}/backup/first-contact", timeout=30).status_code == 200
    assert _version_rows(postgres_url) == [_head()]


@pytest.mark.integration
def test_postgres_without_tables_says_run_backtor_migrate(
    postgres_url: str, tmp_path: Path
) -> None:
    """No migration on start: every request is 503 with the cause, and the log says it too."""
    log = tmp_path / "api.log"
    message = "the database has no Backtor schema: run `backtor migrate`"
    with _api(_env(tmp_path, DATABASE_URL=postgres_url), log) as base:
        for answer in (
            requests.get(f"{base}/backup", timeout=30),
            requests.post(f"{base}/backup", json=SPEC, timeout=30),
            requests.get(f"{base}/ready", timeout=30),
        ):
            assert answer.status_code == 503
            assert answer.json() == {"message": message, "field": None}
        assert _tables(postgres_url) == set()  # nothing migrated behind the operator's back
        assert log.read_text().count(message) == 1  # said once, not per request
        upgrade_to_head(postgres_url)  # the operator runs it; the API serves without a restart
        assert requests.post(f"{base}/backup", json=SPEC, timeout=30).status_code == 201


@pytest.mark.integration
def test_a_worker_waits_for_backtor_migrate_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Replicas started before the operator's migration: they say why and wait, not crash."""
    log = tmp_path / "worker.log"
    env = _env(tmp_path, DATABASE_URL=postgres_url, BACKTOR_WORKER_HEALTH_PORT="0")
    worker = start(["worker"], env, log)
    try:
        wait_until(
            lambda: (
                "the database has no Backtor schema: run `backtor migrate`; waiting for it"
                in log.read_text()
            ),
            timeout=60,
            what="the worker's line about the schema",
        )
        assert worker.poll() is None, log.read_text()
        upgrade_to_head(postgres_url)
        wait_until(
            lambda: "Conductor not reachable yet" in log.read_text(),
            timeout=60,
            what="the worker past the schema (on to Conductor, down here)",
        )
        assert worker.poll() is None, log.read_text()
    finally:
        stop(worker)


@pytest.mark.integration
def test_a_postgres_schema_behind_names_both_revisions(postgres_url: str, tmp_path: Path) -> None:
    upgrade_to_head(postgres_url)
    downgrade_to(_previous(), postgres_url)
    log = tmp_path / "api.log"
    message = f"the schema is at {_previous()}, Backtor needs {_head()}: run `backtor migrate`"
    with _api(_env(tmp_path, DATABASE_URL=postgres_url), log) as base:
        answer = requests.get(f"{base}/backup", timeout=30)
        assert answer.status_code == 503
        assert answer.json() == {"message": message, "field": None}
        assert requests.get(f"{base}/ready", timeout=30).json()["message"] == message
    assert message in log.read_text()


def test_a_database_that_cannot_be_opened_stops_the_start_with_its_cause(tmp_path: Path) -> None:
    """DATA_DIR is a file: one line naming the database and the reason, status 1."""
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    done = subprocess.run(
        [BACKTOR, "api", "--port", str(free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert f"backtor api: cannot migrate sqlite:///{blocker / 'backtor.db'}: " in done.stderr
    assert "Traceback" not in done.stderr
