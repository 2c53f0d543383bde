"""Pins: a backup held outside the retention policy (a legal hold, a known-good baseline).

A pin changes what the plan keeps, so the spec's stored tags are refreshed at once; it
never starts a removal (removals happen only in retention runs, under their cap). A pin on
an EXPIRING backup (its removal waiting out removalDelaySeconds) rescues it: COMPLETED
again, expires_at cleared.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backtor.core.errors import Conflict, NotFound
from backtor.db.models import Backup, BackupSpec, BackupStatus
from backtor.scheduling.recording import plan_for, rescue_kept, store_tags

log = logging.getLogger(__name__)

PINNABLE = (BackupStatus.COMPLETED.value, BackupStatus.EXPIRING.value)


class BackupNotFound(NotFound):
    """No backup with this id belongs to the spec; `backup_id` as the caller gave it."""

    def __init__(self, spec_name: str, backup_id: int | str) -> None:
        super().__init__(f"backup {str(backup_id)!r} of spec {spec_name!r} not found", "id")
        self.backup_id = backup_id


class NotPinnable(Conflict):
    """Only a COMPLETED or EXPIRING backup can be pinned: others have no data, or it is going."""

    def __init__(self, backup_id: int, status: str) -> None:
        super().__init__(
            f"backup {backup_id} is {status}: only a COMPLETED or EXPIRING backup can be "
            "pinned (a REMOVING or REMOVED one has its data going or gone)",
            "id",
        )
        self.backup_id = backup_id
        self.status = status


class SpecPurging(Conflict):
    """A spec under purge: its backups are all going, pinned ones too."""

    def __init__(self, spec_name: str) -> None:
        super().__init__(f"backup spec {spec_name!r} is being purged: its backups cannot be pinned")


def set_pinned(session: Session, spec: BackupSpec, backup_id: int, pinned: bool) -> Backup:
    """Pin or unpin one backup of ``spec`` (idempotent), then refresh the spec's tags.

    Pinning is one conditional UPDATE on ``status`` COMPLETED or EXPIRING (which it makes
    COMPLETED again, expires_at cleared): a retention run marking the same row, or the
    removal outbox moving an EXPIRING one to REMOVING, either sees the pin (and skips the
    row) or wins, and the pin then finds the row REMOVING and fails. Pinning under a purge
    is refused (a purge removes pinned backups too); unpinning is always allowed. The
    caller commits.
    """
    if pinned and spec.deleting:
        raise SpecPurging(spec.name)
    query = update(Backup).where(Backup.id == backup_id, Backup.spec_id == spec.id)
    values: dict[str, object] = {"pinned": pinned}
    if pinned:
        query = query.where(Backup.status.in_(PINNABLE))
        values |= {"status": BackupStatus.COMPLETED.value, "expires_at": None}
    changed = session.execute(query.values(**values).returning(Backup.id)).first()
    if changed is None:
        status = session.scalar(
            select(Backup.status).where(Backup.id == backup_id, Backup.spec_id == spec.id)
        )
        if status is None:
            raise BackupNotFound(spec.name, backup_id)
        raise NotPinnable(backup_id, status)
    plan = plan_for(session, spec)
    store_tags(session, spec, plan)
    # A pinned backup leaves its period's competition: another one may represent it now,
    # and an EXPIRING one that the plan keeps again is rescued too.
    rescue_kept(session, spec, plan)
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
