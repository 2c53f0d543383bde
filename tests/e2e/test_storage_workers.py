"""The ready-made storage workers end to end: the real Conductor, PostgreSQL, `backtor api`,
`backtor worker` and `backtor storage-worker` processes, on real directories and databases.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy.engine import URL, make_url

from backtor.conductor.registration import DEFINITIONS
from tests.e2e.conftest import WRITABLE
from tests.support import processes
from tests.support.conductor import stop_open_runs, workflow, workflows
from tests.support.net import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@dataclass
class Storage:
    api: str
    conductor: str
    env: dict[str, str]
    logs: Path
    prefix: str
    names: list[str] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def create(self, label: str, worker_config: object, **fields: Any) -> str:
        name = f"{self.prefix}-{label}"
        self.names.append(name)
        config = worker_config if isinstance(worker_config, str) else json.dumps(worker_config)
        body = {"name": name, "workerConfig": config, **fields}
        answer = requests.post(f"{self.api}/backup", json=body, timeout=10)
        assert answer.status_code == 201, answer.text
        return name

    def trigger(self, name: str) -> str:
        answer = requests.post(f"{self.api}/backup/{name}/materialized", timeout=10)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["workflowId"])

    def disable(self, name: str) -> None:
        spec = requests.get(f"{self.api}/backup/{name}", timeout=10).json()
        body = {k: v for k, v in spec.items() if k in WRITABLE} | {"enabled": 0}
        answer = requests.put(f"{self.api}/backup/{name}", json=body, timeout=10)
        assert answer.status_code == 200, answer.text

    def backups(self, name: str, **params: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.api}/backup/{name}/materialized", params=params, timeout=10)
        answer.raise_for_status()
        return list(answer.json())

    def start_worker(self, *args: str, log: str = "storage.log") -> subprocess.Popen[bytes]:
        process = processes.start(["storage-worker", *args], self.env, self.logs / log)
        self.started.append(process)
        return process

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def storage(stack_env: dict[str, str], conductor_url: str, tmp_path: Path) -> Iterator[Storage]:
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = f"sw{uuid.uuid4().hex[:8]}"
    with (
        processes.api_server(stack_env, logs / "api.log") as api,
        processes.workers(stack_env, logs),
    ):
        storage = Storage(api, conductor_url, stack_env, logs, prefix)
        wait_until(
            lambda: (
                requests.get(
                    f"{conductor_url}/metadata/workflow/remove_backup", timeout=10
                ).status_code
                == 200
            ),
            timeout=60,
            what="backtor worker to register the definitions",
        )
        try:
            yield storage
        finally:
            for process in storage.started:
                processes.stop(process)
            for name in storage.names:
                for kind in ("create_backup", "remove_backup"):
                    stop_open_runs(conductor_url, kind, name)


def finished(conductor: str, workflow_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(
        lambda: (w := workflow(conductor, workflow_id))["status"] != "RUNNING" and w,
        timeout=timeout,
        what=f"workflow {workflow_id} to finish",
    )


def storage_tasks(run: dict[str, Any], reference: str) -> list[dict[str, Any]]:
    return [t for t in run["tasks"] if t["referenceTaskName"] == reference]


def checksums(directory: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink():
            found[name] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def listing(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*")}


def make_source(source: Path) -> None:
    (source / "docs" / "old").mkdir(parents=True)
    (source / "empty-dir").mkdir()
    (source / "README.txt").write_text("Backtor's end-to-end source\n")
    (source / "docs" / "notes é.md").write_text("# notes\n" + "line\n" * 5000)
    (source / "docs" / "old" / "data.bin").write_bytes(os.urandom(256_000))
    (source / "empty.txt").write_bytes(b"")
    (source / "latest").symlink_to("docs/notes é.md")


def test_filesystem_backups_cycle_through_conductor_and_restore(
    storage: Storage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    source, store = root / "source", root / "store"
    make_source(source)
    storage.start_worker("filesystem", "--allow-root", str(root))
    name = storage.create(
        "files",
        {"kind": "filesystem", "source": str(source), "target": str(store)},
        backupCronString="*/2 * * * * *",
        retentionMinutely="3",
    )

    def removed_some() -> bool:
        done = workflows(storage.conductor, "remove_backup", name)
        return len([w for w in done if w["status"] == "COMPLETED"]) >= 3

    wait_until(removed_some, timeout=90, what="three completed removals")
    storage.disable(name)

    def settled() -> bool:
        runs = workflows(storage.conductor, "create_backup", name) + workflows(
            storage.conductor, "remove_backup", name
        )
        busy = [b for b in storage.backups(name) if b["status"] in ("RUNNING", "REMOVING")]
        return not busy and all(w["status"] != "RUNNING" for w in runs)

    wait_until(settled, timeout=60, what="the spec to settle")

    backups = storage.backups(name)
    kept = {b["dataId"] for b in backups if b["status"] == "COMPLETED"}
    removed = {b["dataId"] for b in backups if b["status"] == "REMOVED"}
    assert kept and len(removed) >= 3, storage.log_text()[-5000:]
    assert {b["status"] for b in backups} <= {"COMPLETED", "REMOVED"}, backups
    # The target holds exactly the backups Backtor keeps: no orphan, no partial file.
    assert {p.name for p in store.iterdir()} == kept
    assert all(d.startswith(f"{name}-") and d.endswith(".tar.gz") for d in kept | removed)
    for backup in backups:
        assert backup["sizeMB"] and backup["sizeMB"] > 0
    # Every kept archive gives back the source, byte for byte.
    expected = checksums(source)
    for data_id in kept:
        restored = tmp_path / "restored" / data_id
        with tarfile.open(store / data_id) as archive:
            archive.extractall(restored, filter="data")
        assert checksums(restored) == expected, data_id
    # Removal is idempotent: removing a backup that is already gone completes.
    gone = sorted(removed)[0]
    run = start_removal(
        storage, name, gone, {"kind": "filesystem", "source": "/x", "target": str(store)}
    )
    done = finished(storage.conductor, run)
    assert done["status"] == "COMPLETED", done.get("reasonForIncompletion")
    assert storage_tasks(done, "remove")[0]["outputData"] == {"dataId": gone, "removed": False}


def start_removal(storage: Storage, name: str, data_id: str, config: object) -> str:
    backup_ids = [b["id"] for b in storage.backups(name) if b["dataId"] == data_id]
    answer = requests.post(
        f"{storage.conductor}/workflow",
        json={
            "name": "remove_backup",
            "version": DEFINITIONS.workflow_version("remove_backup"),
            "correlationId": name,
            "input": {
                "backupName": name,
                "dataId": data_id,
                "workerConfig": config if isinstance(config, str) else json.dumps(config),
                "backupId": backup_ids[0] if backup_ids else 0,
            },
        },
        timeout=10,
    )
    answer.raise_for_status()
    return answer.text.strip().strip('"')


def plain_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE items (
                id serial PRIMARY KEY, name text NOT NULL, price numeric(10, 2),
                at timestamptz, blob bytea, tags text[], note text
            );
            CREATE INDEX items_name ON items (name);
            INSERT INTO items (name, price, at, blob, tags, note)
            SELECT 'item ' || g || ' ✓', g * 1.25,
                   timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
                   decode(md5(g::text), 'hex'), ARRAY['tag', g::text],
                   CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END
            FROM generate_series(1, 2000) AS g;
            CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 100;
            """
        )


def contents(dsn: str) -> tuple[list[tuple[Any, ...]], int, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT * FROM items ORDER BY id").fetchall()
        cheap = conn.execute("SELECT count(*) FROM cheap").fetchone()
        sequence = conn.execute("SELECT last_value FROM items_id_seq").fetchone()
    assert cheap is not None and sequence is not None
    return rows, int(cheap[0]), int(sequence[0])


def test_postgres_dump_restores_into_a_fresh_database(
    storage: Storage, make_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    source_dsn = plain_dsn(make_postgres_database())
    restored_dsn = plain_dsn(make_postgres_database())
    seed(source_dsn)
    root = tmp_path / "root"
    root.mkdir()
    storage.start_worker("--kind", "postgres", "--allow-root", str(root))
    name = storage.create(
        "pg", {"kind": "postgres", "dsn": source_dsn, "target": f"{root}/dumps"}, enabled=0
    )
    run = finished(storage.conductor, storage.trigger(name), timeout=90)
    assert run["status"] == "COMPLETED", storage.log_text()[-5000:]
    (backup,) = wait_until(
        lambda: storage.backups(name, status="COMPLETED"), timeout=30, what="the recorded dump"
    )
    dump = root / "dumps" / backup["dataId"]
    assert dump.name.endswith(".dump") and dump.read_bytes()[:5] == b"PGDMP"
    assert os.listdir(root / "dumps") == [dump.name]
    assert oct(dump.stat().st_mode & 0o777) == "0o600"

    url = make_url(restored_dsn)
    subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
            f"--dbname=host={url.host} port={url.port} user={url.username} dbname={url.database}",
            str(dump),
        ],
        env={**os.environ, "PGPASSWORD": str(url.password)},
        check=True,
        capture_output=True,
    )
    original = contents(source_dsn)
    assert len(original[0]) == 2000
    assert contents(restored_dsn) == original

    # Purging the spec removes the dump through the storage worker's `remove`.
    answer = requests.delete(f"{storage.api}/backup/{name}", params={"purge": "true"}, timeout=10)
    assert answer.status_code == 202, answer.text
    wait_until(
        lambda: requests.get(f"{storage.api}/backup/{name}", timeout=10).status_code == 404,
        timeout=60,
        what="the purged spec to go",
    )
    assert os.listdir(root / "dumps") == []
    # The DSN and its password reached no log.
    logs = storage.log_text()
    assert source_dsn not in logs and f":{url.password}@" not in logs


def bad(root: Path, outside: Path) -> dict[str, tuple[object, str]]:
    """Spec label -> (workerConfig, what the terminal failure must say)."""
    fs = {"kind": "filesystem", "source": f"{root}/source", "target": f"{root}/store"}
    return {
        "malformed": ('{"kind": "filesystem", "source": ', "workerConfig is not valid JSON"),
        "unknown-kind": ({"kind": "s3", "bucket": "b"}, 'kind "s3" is unknown'),
        "not-served": (
            {"kind": "postgres", "dsn": "postgresql://u:pw@127.0.0.1:1/x", "target": str(root)},
            "kind postgres is not served by this storage worker (it serves: filesystem)",
        ),
        "outside": (fs | {"target": str(outside)}, "is outside the storage worker's allowed roots"),
        "dotdot": (fs | {"target": f"{root}/store/../../outside"}, "may not contain '..'"),
        "link-target": (fs | {"target": f"{root}/escape"}, f"(really {outside.resolve()})"),
        "link-source": (fs | {"source": f"{root}/escape"}, "outside the storage worker's"),
        "in-source": (fs | {"target": f"{root}/source/backups"}, "lies inside source"),
    }


def test_bad_worker_configs_fail_terminally_and_write_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "source").mkdir(parents=True)
    (root / "source" / "file.txt").write_text("data\n")
    (root / "store").mkdir()
    (root / "store" / "keep.txt").write_text("not a backup\n")
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    before = listing(root), listing(outside)
    storage.start_worker("filesystem", "--allow-root", str(root))

    cases = bad(root, outside)
    runs = {
        label: storage.trigger(storage.create(label, config, enabled=0))
        for label, (config, _) in cases.items()
    }
    for label, run_id in runs.items():
        run = finished(storage.conductor, run_id)
        assert run["status"] == "FAILED", label
        (task,) = storage_tasks(run, "backup")  # one attempt: no retry
        assert task["status"] == "FAILED_WITH_TERMINAL_ERROR", label
        assert cases[label][1] in task["reasonForIncompletion"], (label, task)

    # A dataId for `remove` must be a plain file name inside the target.
    name = storage.names[0]
    fs = {"kind": "filesystem", "source": f"{root}/source", "target": f"{root}/store"}
    for data_id, phrase in [
        ("../outside/x.tar.gz", "must be a plain file name, not a path"),
        ("sub/x.tar.gz", "must be a plain file name, not a path"),
        ("keep.txt", "is not a backup of this kind"),
    ]:
        run = finished(storage.conductor, start_removal(storage, name, data_id, fs))
        assert run["status"] == "FAILED"
        (task,) = storage_tasks(run, "remove")
        assert task["status"] == "FAILED_WITH_TERMINAL_ERROR"
        assert phrase in task["reasonForIncompletion"]
    assert (listing(root), listing(outside)) == before, "a refused task wrote or removed"


def limited_worker(storage: Storage, file_size: int, *args: str) -> subprocess.Popen[bytes]:
    """A storage worker whose files may not grow past `file_size` bytes: a disk that fills."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    log = (storage.logs / "storage-limited.log").open("ab")
    process = subprocess.Popen(
        [processes.BACKTOR, "storage-worker", *args],
        env=storage.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=limit,  # only sets a limit: safe before exec
    )
    storage.started.append(process)
    return process


def first_attempt_failed(storage: Storage, run_id: str) -> dict[str, Any]:
    def failed_once() -> dict[str, Any]:
        run = workflow(storage.conductor, run_id)
        attempts = storage_tasks(run, "backup")
        done = attempts and attempts[0]["status"] not in ("SCHEDULED", "IN_PROGRESS")
        return run if done else {}

    return wait_until(failed_once, timeout=60, what=f"the first backup attempt of {run_id}")


def retry_scheduled(storage: Storage, run_id: str) -> bool:
    return len(storage_tasks(workflow(storage.conductor, run_id), "backup")) == 2


def test_storage_errors_are_retried_and_leave_nothing_behind(
    storage: Storage, postgres_server_url: URL, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "source").mkdir(parents=True)
    (root / "source" / "big.bin").write_bytes(os.urandom(3_000_000))
    for target in ("full", "down", "denied"):
        (root / target).mkdir()
    limited_worker(storage, 1_000_000, "filesystem", "postgres", "--allow-root", str(root))
    secret = f"s3cret-{uuid.uuid4().hex}"
    server = postgres_server_url
    configs = {
        "full": {"kind": "filesystem", "source": f"{root}/source", "target": f"{root}/full"},
        "down": {
            "kind": "postgres",
            "dsn": f"postgresql://backtor:{secret}@127.0.0.1:{free_port()}/backtor",
            "target": f"{root}/down",
        },
        "denied": {
            "kind": "postgres",
            "dsn": f"postgresql://{server.username}:{secret}@{server.host}:{server.port}/postgres",
            "target": f"{root}/denied",
        },
    }
    phrases = {
        "full": "cannot archive",
        "down": "pg_dump of backtor@127.0.0.1",
        "denied": "password authentication failed",
    }
    runs = {
        label: storage.trigger(storage.create(label, config, enabled=0))
        for label, config in configs.items()
    }
    for label, run_id in runs.items():
        run = first_attempt_failed(storage, run_id)
        first = storage_tasks(run, "backup")[0]
        assert first["status"] == "FAILED", (label, first)  # not terminal: Conductor retries
        assert phrases[label] in first["reasonForIncompletion"], (label, first)
        assert secret not in json.dumps(first["outputData"]) + first["reasonForIncompletion"]
        wait_until(
            partial(retry_scheduled, storage, run_id),
            timeout=30,
            what=f"{label}: the retry to be scheduled",
        )
        assert workflow(storage.conductor, run_id)["status"] == "RUNNING"
    # The partial archive and dumps were deleted.
    for target in ("full", "down", "denied"):
        assert os.listdir(root / target) == [], target
    assert secret not in storage.log_text()


def test_a_stopping_worker_hands_its_backup_back(storage: Storage, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "source").mkdir(parents=True)
    big = root / "source" / "big.sparse"
    with big.open("wb") as file:
        file.truncate(64 * 2**30)  # reads as zeros: takes long to compress, no disk space
    store = root / "store"
    store.mkdir()
    first = storage.start_worker("filesystem", "--allow-root", str(root), log="first.log")
    name = storage.create(
        "stop", {"kind": "filesystem", "source": f"{root}/source", "target": str(store)}, enabled=0
    )
    run_id = storage.trigger(name)
    wait_until(lambda: list(store.iterdir()), timeout=60, what="the backup to start writing")
    os.killpg(first.pid, signal.SIGTERM)
    first.wait(timeout=15)
    assert first.returncode == 0
    assert list(store.iterdir()) == [], "the partial archive was left behind"
    run = workflow(storage.conductor, run_id)
    assert run["status"] == "RUNNING"
    (task,) = storage_tasks(run, "backup")
    assert task["status"] in ("SCHEDULED", "IN_PROGRESS"), task  # handed back, no retry spent
    assert task["retryCount"] == 0

    big.unlink()
    (root / "source" / "small.txt").write_text("small\n")
    storage.start_worker("filesystem", "--allow-root", str(root), log="second.log")
    done = finished(storage.conductor, run_id, timeout=60)
    assert done["status"] == "COMPLETED", done.get("reasonForIncompletion")
    (task,) = storage_tasks(done, "backup")
    assert [p.name for p in store.iterdir()] == [task["outputData"]["dataId"]]
