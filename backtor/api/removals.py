"""Handing a purged spec's backups to the removal path (remove_backup workflows)."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from backtor.conductor import ConductorClient, ConductorError, ConductorUnavailable
from backtor.db import repository
from backtor.registration import DEFINITIONS

log = logging.getLogger(__name__)

REMOVE_WORKFLOW = "remove_backup"


class BackupRemovalStarter(Protocol):
    """Starts the removal of every removable backup of a spec; the API's only hook into it.

    Raise ConductorUnavailable when the workflows cannot be started; backups not handed
    over must stay as they were, so a repeated purge picks them up.
    """

    def start_removals(self, spec_name: str) -> None: ...


class ConductorRemovalStarter:
    """Starts one remove_backup workflow per COMPLETED or REMOVE_FAILED backup.

    Each backup is claimed (-> REMOVING) and committed before its workflow starts, so two
    purges never remove one backup twice; a start that fails releases the claim.
    """

    def __init__(self, client: ConductorClient, sessions: sessionmaker[Session]) -> None:
        self._client = client
        self._sessions = sessions

    def start_removals(self, spec_name: str) -> None:
        with self._sessions() as session:
            spec = repository.get_spec(session, spec_name)
            if spec is None:
                return
            backup_ids = repository.removable_backup_ids(session, spec.id)
            for backup_id in backup_ids:
                claim = repository.claim_for_removal(session, backup_id)
                if claim is None:
                    session.rollback()
                    continue
                backup, previous_status = claim
                session.commit()
                try:
                    workflow_id = self._client.start_workflow(
                        REMOVE_WORKFLOW,
                        input={
                            "backupName": spec.name,
                            "dataId": backup.data_id,
                            "workerConfig": spec.worker_config,
                            "backupId": backup.id,
                        },
                        correlation_id=spec.name,
                        version=DEFINITIONS.workflow_version(REMOVE_WORKFLOW),
                    )
                except (ConductorUnavailable, ConductorError) as error:
                    repository.release_removal_claim(
                        session, backup, previous_status, str(error)[:500]
                    )
                    session.commit()
                    raise
                repository.record_removal_started(session, backup, workflow_id)
                session.commit()
                log.info(
                    "purge of %s: remove_backup %s started for backup %d",
                    spec.name,
                    workflow_id,
                    backup.id,
                )
