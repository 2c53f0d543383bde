"""Handing a purged spec's backups to the removal path (remove_backup workflows)."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from backtor.conductor.http import ConductorClient
from backtor.conductor.registration import DEFINITIONS
from backtor.db import repository

log = logging.getLogger(__name__)

REMOVE_WORKFLOW = "remove_backup"


class BackupRemovalStarter(Protocol):
    """Starts the removal of a purged spec's COMPLETED backups; the API's hook into it.

    Raise ConductorUnavailable (or ConductorRefused) when removals cannot be started; the
    backups not handed over must stay as they were, so a repeated purge picks them up.
    """

    def start_removals(self, spec_name: str) -> None: ...


class ConductorRemovalStarter:
    """Starts one remove_backup workflow per COMPLETED backup of the spec, at once.

    Per backup, one transaction: claim (-> REMOVING), start the workflow, store its id,
    commit. Nobody ever sees a REMOVING row without its workflow, two purges never remove
    one backup twice, and a failed start rolls the backup back to COMPLETED.
    """

    def __init__(self, client: ConductorClient, sessions: sessionmaker[Session]) -> None:
        self._client = client
        self._sessions = sessions

    def start_removals(self, spec_name: str) -> None:
        version = DEFINITIONS.workflow_version(REMOVE_WORKFLOW)
        with self._sessions() as session:
            spec = repository.get_spec(session, spec_name)
            if spec is None:
                return
            name, worker_config = spec.name, spec.worker_config
            backup_ids = repository.removable_backup_ids(session, spec.id)
            session.rollback()
            for backup_id in backup_ids:
                backup = repository.claim_for_removal(session, backup_id)
                if backup is None:
                    session.rollback()
                    continue
                try:
                    workflow_id = self._client.start_workflow(
                        REMOVE_WORKFLOW,
                        input={
                            "backupName": name,
                            "dataId": backup.data_id,
                            "workerConfig": worker_config,
                            "backupId": backup.id,
                        },
                        correlation_id=name,
                        version=version,
                    )
                except Exception:
                    session.rollback()
                    raise
                repository.record_removal_started(session, backup, workflow_id)
                session.commit()
                log.info(
                    "purge of %s: remove_backup %s started for backup %d",
                    name,
                    workflow_id,
                    backup_id,
                )
