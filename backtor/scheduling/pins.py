"""Pins: a backup held outside the retention policy (a legal hold, a known-good baseline).

A pin changes what the plan keeps, so the spec's stored tags are refreshed at once; it
never starts a removal (removals happen only in retention runs, under their cap).
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.scheduling.recording import plan_for, store_tags

log = logging.getLogger(__name__)


class BackupNotFound(LookupError):
    """No backup with this id belongs to the spec."""


class NotPinnable(Exception):
    """Only a COMPLETED backup can be pinned: others have no data, or it is going."""

    def __init__(self, backup_id: int, status: str) -> None:
        super().__init__(f"backup {backup_id} is {status}")
        self.backup_id = backup_id
        self.status = status


def set_pinned(session: Session, spec: BackupSpec, backup_id: int, pinned: bool) -> Backup:
    """Pin or unpin one backup of ``spec`` (idempotent), then refresh the spec's tags.

    Pinning is one conditional UPDATE on ``status = COMPLETED``: a retention run marking
    the same row REMOVING either sees the pin (and skips the row) or wins, and the pin
    then finds the row REMOVING and fails. The caller commits.
    """
    query = update(Backup).where(Backup.id == backup_id, Backup.spec_id == spec.id)
    if pinned:
        query = query.where(Backup.status == BackupStatus.COMPLETED.value)
    changed = session.execute(query.values(pinned=pinned).returning(Backup.id)).first()
    if changed is None:
        status = session.scalar(
            select(Backup.status).where(Backup.id == backup_id, Backup.spec_id == spec.id)
        )
        if status is None:
            raise BackupNotFound(backup_id)
        raise NotPinnable(backup_id, status)
    store_tags(session, spec, plan_for(session, spec))
    log.info(
        "spec %s: backup %s %s",
        spec.name,
        backup_id,
        "pinned" if pinned else "unpinned",
        extra={"backup": spec.name},
    )
    backup = session.get(Backup, backup_id, populate_existing=True)
    assert backup is not None
    return backup
