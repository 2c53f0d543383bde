"""What Backtor's own tasks do, given their input: record a backup taken, record a removal.

The task workers (backtor.workers.tasks) call these for the tasks Conductor hands them;
the stall repair (backtor.scheduling.stalls) calls them for a task whose worker died.
Both are idempotent: running one twice records nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from backtor.conductor.payloads import from_epoch_ms
from backtor.conductor.results import TaskOutcome, completed, terminal
from backtor.db.models import BackupSpec
from backtor.runtime.services import Services
from backtor.scheduling.recording import (
    TakenBackup,
    apply_plan,
    parse_row_counts,
    parse_size,
    record_removed,
    record_taken,
    recorded_checksum,
)

log = logging.getLogger(__name__)


def record_backup(services: Services, data: Mapping[str, Any], workflow_id: str) -> TaskOutcome:
    """Record the backup the `backup` task just took, then apply the spec's retention."""
    name = str(data.get("backupName") or "")
    data_id = data.get("dataId")
    if data_id in (None, ""):
        return terminal("the backup task returned no dataId")
    try:
        scheduled_at = datetime.fromisoformat(str(data.get("scheduledTime")))
    except ValueError:
        return terminal(f"scheduledTime {data.get('scheduledTime')!r} is not ISO-8601")
    taken = TakenBackup(
        spec_name=name,
        task_id=str(data.get("backupTaskId")),
        workflow_id=str(data.get("workflowId") or workflow_id),
        data_id=str(data_id),
        size_mb=parse_size(data.get("dataSizeMB")),
        scheduled_at=scheduled_at,
        start_time=from_epoch_ms(data.get("backupStartTime")),
        end_time=from_epoch_ms(data.get("backupEndTime")),
        checksum=recorded_checksum(data.get("checksum")),
        row_counts=parse_row_counts(data.get("rowCounts")),
    )
    with services.db.begin() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == name))
        if spec is None:
            log.error(
                "backup %s taken for spec %s, which no longer exists: remove it by hand",
                taken.data_id,
                name,
                extra={"backup": name, "workflow_id": taken.workflow_id},
            )
            return terminal(f"spec {name!r} no longer exists; dataId {taken.data_id}")
        backup = record_taken(session, spec, taken)
        removals = apply_plan(
            session, spec, services.clock(), services.settings.max_removals_per_run
        )
        backup_id = backup.id
    # The removals it marked are started by the scheduler's next pass (within seconds):
    # this task stays short, well inside its response timeout.
    return completed({"backupId": backup_id, "removals": len(removals)})


def record_removed_backup(
    services: Services, data: Mapping[str, Any], workflow_id: str
) -> TaskOutcome:
    try:
        backup_id = int(data.get("backupId"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return terminal(f"backupId {data.get('backupId')!r} is not a number")
    with services.db.begin() as session:
        removed = record_removed(session, backup_id, services.clock(), open_run=workflow_id)
    log.info(
        "backup %s removed (%s)",
        backup_id,
        "recorded" if removed else "already recorded",
        extra={"backup": data.get("backupName"), "workflow_id": workflow_id},
    )
    return completed({"backupId": backup_id})
