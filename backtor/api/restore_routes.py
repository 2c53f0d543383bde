"""Restore and verify one backup: a restore_backup or verify_backup run each (docs/restore.md).

The request claims the backup (backtor.scheduling.restores.claim) and commits before it
calls Conductor; the scheduler's pass follows the run and records how it ended on the
backup (GET .../materialized shows it). restoreConfig and workerConfig hold secrets: they
go into the workflow's input, never into a log line.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, status

from backtor.api.common import SpecPath, errors, only_query, parse_backup_id
from backtor.api.context import ServicesDep, SessionDep
from backtor.api.errors import StartRefused
from backtor.api.retention_routes import BackupId
from backtor.api.schemas import RestoreIn, RunAccepted, VerifyIn
from backtor.core.errors import ConductorUnavailable, InvalidField
from backtor.core.specs import MAX_WORKER_CONFIG_CHARS
from backtor.db import repository
from backtor.runtime.services import Services
from backtor.scheduling import restores
from backtor.scheduling.restores import Kind

log = logging.getLogger(__name__)

router = APIRouter(tags=["restore"])

RUN_404 = "No such backup spec, or no such backup of it"
RUN_502 = "Conductor refused the start (its answer is in `message`); the run is recorded FAILED"
RUN_503 = (
    "Conductor cannot be reached (the start is unconfirmed: the scheduler adopts the run if it "
    "started, else records it FAILED), or the database cannot be reached or is not migrated"
)


def _409(kind: Kind) -> str:
    return (
        f"The backup is not COMPLETED (EXPIRING, REMOVING or REMOVED ones are never "
        f"{kind.past}: `message` says why), a {kind.name} of it is under way, or a purge of "
        "the spec is under way"
    )


RESTORE_EXAMPLES = {
    "filesystem": {
        "summary": "Into a new directory",
        "value": {"restoreConfig": '{"target": "/srv/restored/www"}'},
    },
    "postgres": {
        "summary": "Into an empty database",
        "value": {"restoreConfig": '{"dsn": "postgresql://app@db:5432/orders_restored"}'},
    },
}


def _check_config(field: str, value: str | None) -> None:
    """The rules the schema states (minLength 1, maxLength, no NUL); the content is the
    storage worker's to check."""
    if value is None:
        return
    if not value:
        raise InvalidField(field, f"{field} must not be empty")
    if len(value) > MAX_WORKER_CONFIG_CHARS:
        raise InvalidField(field, f"{field} is longer than {MAX_WORKER_CONFIG_CHARS} characters")
    if "\x00" in value:
        raise InvalidField(field, f"{field} must not contain NUL characters")


def _run(
    services: Services,
    session: SessionDep,
    name: str,
    backup_id: str,
    kind: Kind,
    config: str | None,
) -> RunAccepted:
    spec = repository.require_spec(session, name)
    job = restores.claim(session, spec, parse_backup_id(name, backup_id), kind, services.clock())
    session.commit()  # no transaction stays open across calls to Conductor
    started = restores.start(services, job, config)
    if started.workflow_id is not None:
        return RunAccepted(name=name, backupId=job.backup_id, workflowId=started.workflow_id)
    if started.refused is not None:
        raise StartRefused(f"Conductor refused to start the {kind.name}: {started.refused}")
    raise ConductorUnavailable(
        f"Conductor did not answer the start: the {kind.name} may have started. The scheduler "
        "adopts its run if it did, or records it FAILED; GET .../materialized shows which"
    )


@router.post(
    "/backup/{name}/materialized/{id}/restore",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=errors(400, 404, 409, 502, e404=RUN_404, e409=_409(restores.RESTORE), e503=RUN_503),
    dependencies=[only_query()],
)
def restore_backup(
    name: SpecPath,
    backup_id: BackupId,
    body: Annotated[RestoreIn, Body(openapi_examples=RESTORE_EXAMPLES)],
    session: SessionDep,
    services: ServicesDep,
) -> RunAccepted:
    """Restore a COMPLETED backup through the storage worker's `restore` task.

    Starts a restore_backup workflow (correlationId: the spec's name). The backup is not
    removed while it runs; its outcome appears as `lastRestore` in GET .../materialized.
    """
    _check_config("restoreConfig", body.restoreConfig)
    return _run(services, session, name, backup_id, restores.RESTORE, body.restoreConfig)


@router.post(
    "/backup/{name}/materialized/{id}/verify",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=errors(400, 404, 409, 502, e404=RUN_404, e409=_409(restores.VERIFY), e503=RUN_503),
    dependencies=[only_query()],
)
def verify_backup(
    name: SpecPath,
    backup_id: BackupId,
    session: SessionDep,
    services: ServicesDep,
    body: VerifyIn | None = None,
) -> RunAccepted:
    """Verify a COMPLETED backup through the storage worker's `verify` task (a body is
    optional).

    Starts a verify_backup workflow (correlationId: the spec's name) with the checksum (and
    row counts) recorded at backup time. The backup is not removed while it runs; the
    verdict appears as `verifyStatus`, `verifyDetails` and `lastVerifiedAt`.
    """
    config = body.verifyConfig if body is not None else None
    _check_config("verifyConfig", config)
    return _run(services, session, name, backup_id, restores.VERIFY, config)
