"""A small but real storage worker for the tests: files in a directory.

`backup` writes one file and returns its name as dataId; `remove` deletes it (a missing
file counts as removed). It polls Conductor over REST in a thread, like any worker would.
Knobs: `delay` (a slow backup), `fail_backups` and `fail_removals` (how many of the next
ones fail, terminally, so the workflow fails at once), `broken_for` (spec names whose every
backup fails that way: a storage target broken for those specs only, which leaves
`fail_backups` to the others), `keep_only_wanted` (as the real storage worker does: a
backup whose task Conductor cancelled meanwhile, its run terminated, keeps no file; listed
in `cancelled`). Tasks for spec names that `accepts`
refuses (another test's leftovers on the shared server) fail without touching anything.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests


class FileStorageWorker:
    def __init__(
        self,
        conductor_url: str,
        directory: Path,
        *,
        prefix: str = "",
        poll_interval: float = 0.1,
    ) -> None:
        self.base = conductor_url.rstrip("/")
        self.prefix = prefix
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        self.delay = 0.0
        self.fail_backups = 0
        self.fail_removals = 0
        self.broken_for: set[str] = set()
        self.keep_only_wanted = False
        self.cancelled: list[str] = []  # workflow ids whose backup was dropped, unwanted
        self.backups_taken: list[str] = []
        self.removed: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=("backup", self._backup), daemon=True),
            threading.Thread(target=self._loop, args=("remove", self._remove), daemon=True),
        ]
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._current = threading.local()  # the task a loop thread works on

    def __enter__(self) -> FileStorageWorker:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def files(self) -> set[str]:
        return {p.name for p in self.directory.iterdir() if not p.name.startswith(".")}

    def _loop(self, task_type: str, handle: Any) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                answer = session.get(
                    f"{self.base}/tasks/poll/{task_type}",
                    params={"workerid": f"test-storage-{os.getpid()}"},
                    timeout=10,
                )
            except requests.RequestException:
                time.sleep(0.5)
                continue
            if answer.status_code != 200 or not answer.content:
                self._stop.wait(self.poll_interval)
                continue
            task = answer.json()
            self._current.task = task
            if str(task["inputData"].get("backupName", "")).startswith(self.prefix):
                status, output, reason = handle(task["inputData"])
            else:
                status, output, reason = "FAILED_WITH_TERMINAL_ERROR", {}, "not this test's spec"
            body = {
                "taskId": task["taskId"],
                "workflowInstanceId": task["workflowInstanceId"],
                "workerId": "test-storage",
                "status": status,
                "outputData": output,
            }
            if reason:
                body["reasonForIncompletion"] = reason
            self._report(session, body)

    def _report(self, session: requests.Session, body: dict[str, Any]) -> None:
        """Send a result, retrying while Conductor is away (a restart), as real workers do."""
        for _ in range(120):
            try:
                session.post(f"{self.base}/tasks", json=body, timeout=10).raise_for_status()
                return
            except requests.RequestException:
                if self._stop.wait(1.0):
                    return

    def _backup(self, data: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
        with self._lock:
            if data["backupName"] in self.broken_for:
                return "FAILED_WITH_TERMINAL_ERROR", {}, "test storage: target broken"
            if self.fail_backups > 0:
                self.fail_backups -= 1
                return "FAILED_WITH_TERMINAL_ERROR", {}, "test storage: told to fail"
        if self.delay:
            time.sleep(self.delay)
        if self.keep_only_wanted and not self._still_wanted():
            with self._lock:
                self.cancelled.append(self._current.task["workflowInstanceId"])
            return "FAILED", {}, "test storage: the task was cancelled; no file kept"
        name = f"{data['backupName']}-{uuid.uuid4().hex[:10]}.bak"
        content = f"backup of {data['backupName']}\n".encode()
        (self.directory / name).write_bytes(content)
        with self._lock:
            self.backups_taken.append(name)
        return "COMPLETED", {"dataId": name, "dataSizeMB": len(content) / 1e6}, None

    def _still_wanted(self) -> bool:
        """Whether Conductor still waits for the current task (backtor's storage worker asks
        the same before it keeps a backup); when it cannot say, the backup is kept."""
        task_id = self._current.task["taskId"]
        try:
            answer = self._session.get(f"{self.base}/tasks/{task_id}", timeout=10)
            answer.raise_for_status()
            return bool(answer.json().get("status") != "CANCELED")
        except (requests.RequestException, ValueError):
            return True

    def _remove(self, data: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
        with self._lock:
            if self.fail_removals > 0:
                self.fail_removals -= 1
                return "FAILED_WITH_TERMINAL_ERROR", {}, "test storage: told to fail a removal"
        target = self.directory / str(data["dataId"])
        target.unlink(missing_ok=True)
        with self._lock:
            self.removed.append(str(data["dataId"]))
        return "COMPLETED", {}, None
