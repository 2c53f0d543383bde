"""The storage task functions in process: their shared preamble and how each one ends.

No Conductor: a TaskRun goes in, a TaskOutcome comes out, on a real temporary directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backtor.conductor.payloads import TaskRun, TaskStatus, from_epoch_ms
from backtor.conductor.results import TaskOutcome
from backtor.storage import worker
from backtor.storage.errors import TerminalError
from backtor.storage.paths import AllowedRoots
from backtor.storage.worker import StorageWorkerSettings, backup_task, remove_task

PASSWORD = "pa55-w0rd-Secret"
DSN = f"postgresql://alice:{PASSWORD}@db:5432/orders"
Run = Callable[[StorageWorkerSettings, TaskRun], TaskOutcome]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "a.txt").write_text("alpha\n")
    return tmp_path


def served(root: Path, *kinds: str) -> StorageWorkerSettings:
    return StorageWorkerSettings(kinds, AllowedRoots.from_paths([str(root)]))


def task(name: object, config: object, **more: Any) -> TaskRun:
    data = {"backupName": name, "workerConfig": json.dumps(config), **more}
    return TaskRun(
        task_id="task-1",
        task_type="backup",
        reference_name="backup",
        status=TaskStatus.IN_PROGRESS,
        workflow_id="wf-1",
        input=data,
        scheduled_time=from_epoch_ms(1),
    )


def filesystem(root: Path) -> dict[str, str]:
    return {"kind": "filesystem", "source": str(root / "source"), "target": str(root / "store")}


def postgres(root: Path) -> dict[str, str]:
    return {"kind": "postgres", "dsn": DSN, "target": str(root / "store")}


def test_a_backup_is_taken_then_removed(root: Path) -> None:
    settings = served(root, "filesystem")
    taken = backup_task(settings, task("docs", filesystem(root)))
    assert taken.status == "COMPLETED", taken.reason
    data_id = taken.output["dataId"]
    assert data_id.startswith("docs-") and data_id.endswith(".tar.gz")
    assert (root / "store" / data_id).is_file()
    assert taken.output["dataSizeMB"] > 0

    removed = remove_task(settings, task("docs", filesystem(root), dataId=data_id))
    assert removed.status == "COMPLETED"
    assert removed.output == {"dataId": data_id, "removed": True}
    again = remove_task(settings, task("docs", filesystem(root), dataId=data_id))
    assert again.output == {"dataId": data_id, "removed": False}


@pytest.mark.parametrize("run", [backup_task, remove_task])
def test_a_bad_name_or_config_fails_terminally(run: Run, root: Path) -> None:
    settings = served(root, "filesystem")
    bad_name = run(settings, task("../etc", filesystem(root), dataId="x.tar.gz"))
    assert bad_name.status == "FAILED_WITH_TERMINAL_ERROR"
    assert "backupName '../etc' is not a valid spec name" in bad_name.reason
    not_served = run(settings, task("db", postgres(root), dataId="x.dump"))
    assert not_served.status == "FAILED_WITH_TERMINAL_ERROR"
    assert "is not served by this storage worker" in not_served.reason
    assert PASSWORD not in not_served.reason


@pytest.mark.parametrize("run", [backup_task, remove_task])
def test_a_refusal_in_the_preamble_is_masked_with_the_secrets_parsed_so_far(
    run: Run, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(config: Any, kinds: Any) -> None:
        raise TerminalError(f"refused {config.dsn} (password {PASSWORD})")

    monkeypatch.setattr(worker, "check_served", refuse)
    answer = run(served(root, "postgres"), task("db", postgres(root), dataId="x.dump"))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    reason = answer.reason
    assert PASSWORD not in reason and "alice" not in reason
    assert reason == "refused *** (password ***)"


def test_a_refusal_after_the_preamble_is_masked_too(root: Path) -> None:
    answer = remove_task(served(root, "postgres"), task("db", postgres(root), dataId=PASSWORD))
    assert answer.status == "FAILED_WITH_TERMINAL_ERROR"
    assert PASSWORD not in answer.reason
    assert "dataId '***'" in answer.reason


@pytest.mark.parametrize("run", [backup_task, remove_task])
def test_a_stopping_worker_hands_the_task_back_untouched(
    run: Run, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "stopping", lambda: True)
    answer = run(served(root, "filesystem"), task("docs", filesystem(root), dataId="x.tar.gz"))
    assert answer.status == "IN_PROGRESS"
    assert answer.callback_after_seconds == 0
    assert not (root / "store").exists()
