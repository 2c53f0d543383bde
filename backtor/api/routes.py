"""The /backup routes: parse, call backtor.core.specs and backtor.db, answer. Nothing else."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Query, Request, Response, status
from sqlalchemy.orm import Session

from backtor.api.common import (
    DEFAULT_PAGE_SIZE,
    ERROR_RESPONSES,
    PAGE_QUERY,
    PAGED_RESPONSES,
    PageAfter,
    PageLimit,
    link_next,
    only_query,
    parse_backup_cursor,
)
from backtor.api.context import ServicesDep, SessionDep
from backtor.api.errors import StartRefused
from backtor.api.schemas import (
    SPEC_EXAMPLES,
    BackupOut,
    PurgeAccepted,
    SpecIn,
    SpecOut,
    TriggerAccepted,
)
from backtor.conductor.names import CREATE_BACKUP
from backtor.core.errors import ConductorUnavailable, Conflict, InvalidField
from backtor.core.policy import Tier
from backtor.core.specs import NAME_PATTERN, normalise_spec
from backtor.db import repository
from backtor.db.models import BackupStatus, FireStatus
from backtor.runtime.services import Services
from backtor.scheduling.fires import (
    add_manual_fire,
    claim_pending,
    give_up_fire,
    settle_due_fire,
    start_manual_fire,
)

log = logging.getLogger(__name__)


router = APIRouter(tags=["backup"])

SpecBody = Annotated[SpecIn, Body(openapi_examples=SPEC_EXAMPLES)]


@router.get(
    "/backup",
    response_model=list[SpecOut],
    responses=PAGED_RESPONSES,
    dependencies=[only_query("enabled", *PAGE_QUERY)],
)
def list_specs(
    request: Request,
    response: Response,
    session: SessionDep,
    enabled: Annotated[
        Literal["0", "1"] | None, Query(description="1: only enabled specs; 0: only disabled")
    ] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    after: PageAfter = None,
) -> list[SpecOut]:
    """Backup specs ordered by name, a page at a time (`after`: the last name seen)."""
    if after is not None and not re.fullmatch(NAME_PATTERN, after, re.ASCII):
        raise InvalidField("after", "after must be a spec name (the last of the previous page)")
    flag = None if enabled is None else enabled == "1"
    specs = repository.list_specs(session, enabled=flag, after=after, limit=limit + 1)
    if len(specs) > limit:
        specs = specs[:limit]
        link_next(request, response, specs[-1].name)
    return [SpecOut.of(spec) for spec in specs]


@router.post(
    "/backup",
    status_code=status.HTTP_201_CREATED,
    response_model=SpecOut,
    responses=ERROR_RESPONSES,
    dependencies=[only_query()],
)
def create_spec(
    body: SpecBody, response: Response, session: SessionDep, services: ServicesDep
) -> SpecOut:
    """Create a backup spec; 409 when the name is taken."""
    if body.name is None:
        raise InvalidField("name", "name is required")
    values = normalise_spec(body.to_draft(body.name))
    spec = repository.create_spec(session, values, services.clock())  # SpecExists: 409
    session.commit()
    response.headers["Location"] = f"/backup/{quote(spec.name, safe='')}"
    return SpecOut.of(spec)


def _replace(session: Session, services: Services, name: str, body: SpecIn) -> SpecOut:
    if body.name is not None and body.name != name:
        raise InvalidField(
            "name", "name in the body must match the name in the path (renaming is not supported)"
        )
    values = normalise_spec(body.to_draft(name))
    spec = repository.require_spec(session, name, for_update=True)
    if spec.deleting:
        raise Conflict(f"backup spec {name!r} is being purged and cannot change", "name")
    now = services.clock()
    if repository.changes_schedule(spec, values):
        settle_due_fire(session, spec, now)
    repository.replace_spec(session, spec, values, now)
    session.commit()
    return SpecOut.of(spec)


@router.put(
    "/backup/{name}", response_model=SpecOut, responses=ERROR_RESPONSES, dependencies=[only_query()]
)
def replace_spec(name: str, body: SpecBody, session: SessionDep, services: ServicesDep) -> SpecOut:
    """Replace a spec entirely: an omitted optional field goes back to its default."""
    return _replace(session, services, name, body)


@router.put(
    "/backup", response_model=SpecOut, responses=ERROR_RESPONSES, dependencies=[only_query()]
)
def replace_spec_by_body(body: SpecBody, session: SessionDep, services: ServicesDep) -> SpecOut:
    """The seed's form of PUT: the name comes from the body."""
    if body.name is None:
        raise InvalidField("name", "name is required")
    return _replace(session, services, body.name, body)


@router.get(
    "/backup/{name}", response_model=SpecOut, responses=ERROR_RESPONSES, dependencies=[only_query()]
)
def get_spec(name: str, session: SessionDep) -> SpecOut:
    return SpecOut.of(repository.require_spec(session, name))


@router.delete(
    "/backup/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_model=None,
    responses={
        **ERROR_RESPONSES,
        202: {"model": PurgeAccepted, "description": "Purge under way"},
        204: {"description": "Deleted"},
    },
    dependencies=[only_query("purge")],
)
def delete_spec(
    name: str,
    session: SessionDep,
    services: ServicesDep,
    purge: Annotated[
        bool, Query(description="Remove the spec's backups first, then delete the spec")
    ] = False,
) -> Response | PurgeAccepted:
    """Delete a spec; with backups not yet removed, only through `?purge=true`.

    A purge only writes: the spec is marked, its COMPLETED backups go into the removal
    outbox (REMOVING), and the scheduler's pass starts their remove_backup workflows under
    its per-pass limit. So a purge needs no Conductor and holds no lock across a call.
    """
    spec = repository.require_spec(session, name, for_update=True)
    pending = repository.count_unremoved_backups(session, spec.id)
    if pending == 0:
        repository.delete_spec(session, spec.id)
        session.commit()
        log.info("backup spec %s deleted", name)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if not purge:
        raise Conflict(
            f"backup spec {name!r} still has {pending} backup(s) that were not removed "
            "(RUNNING, COMPLETED, REMOVING or REMOVE_FAILED); DELETE with ?purge=true to "
            "remove them and then the spec"
        )
    now = services.clock()
    repository.mark_purging(session, spec, now)
    marked = repository.mark_purge_removals(
        session, spec.id, now, services.settings.max_removals_per_run
    )
    session.commit()
    # Marking moves COMPLETED to REMOVING: `pending` (counted under the spec's lock) stands.
    log.info(
        "backup spec %s: purge requested, %d backup(s) to remove, %d handed to the removal outbox",
        name,
        pending,
        marked,
    )
    body = PurgeAccepted(
        name=name,
        message="purge under way: the spec is deleted once its last backup is removed",
        pendingBackups=pending,
    )
    return _json(202, body)


def _json(status_code: int, body: PurgeAccepted) -> Response:
    return Response(
        content=body.model_dump_json(), status_code=status_code, media_type="application/json"
    )


def _parse_statuses(values: list[str]) -> set[BackupStatus]:
    statuses: set[BackupStatus] = set()
    for value in values:
        try:
            statuses.add(BackupStatus(value.upper()))
        except ValueError:
            allowed = ", ".join(s.value for s in BackupStatus)
            raise InvalidField("status", f"status must be one of {allowed}") from None
    return statuses


def _parse_tag(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return Tier(value.lower()).value
    except ValueError:
        allowed = ", ".join(t.value for t in Tier)
        raise InvalidField("tag", f"tag must be one of {allowed}") from None


@router.get(
    "/backup/{name}/materialized",
    response_model=list[BackupOut],
    responses=PAGED_RESPONSES,
    dependencies=[only_query("status", "tag", *PAGE_QUERY)],
)
def list_backups(
    name: str,
    request: Request,
    response: Response,
    session: SessionDep,
    status_filter: Annotated[
        list[str] | None,
        Query(alias="status", description="Only these statuses (repeat for several)"),
    ] = None,
    tag: Annotated[str | None, Query(description="Only backups with this retention tag")] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    after: PageAfter = None,
) -> list[BackupOut]:
    """The backups taken for this spec, newest first, a page at a time (`after`: an id)."""
    statuses = _parse_statuses(status_filter or [])
    tier = _parse_tag(tag)
    cursor = parse_backup_cursor(after)
    spec = repository.require_spec(session, name)
    backups = repository.list_backups(
        session, spec.id, statuses=statuses, tag=tier, after=cursor, limit=limit + 1
    )
    if len(backups) > limit:
        backups = backups[:limit]
        link_next(request, response, str(backups[-1].id))
    return [BackupOut.of(backup) for backup in backups]


@router.post(
    "/backup/{name}/materialized",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TriggerAccepted,
    responses=ERROR_RESPONSES,
    dependencies=[only_query()],
)
def trigger_backup(name: str, session: SessionDep, services: ServicesDep) -> TriggerAccepted:
    """Take a backup now, through the same fire ledger as scheduled backups.

    The fire is written and claimed in one transaction, so no scheduler pass ever sees it
    unclaimed: the pass cannot take it between this request's commit and its start (the
    claim then found nothing, and the request failed with a 500). Only a request that dies
    before its start leaves the fire to the scheduler, once the claim lapses (30 s).

    A start whose answer is lost is looked up in Conductor before the request answers
    (start_manual_fire): a run it created is reported (202), not left untracked behind a 503.
    """
    spec = repository.require_spec(session, name)
    if spec.deleting:
        raise Conflict(f"backup spec {name!r} is being purged", "name")
    now = services.clock()
    fire_id = add_manual_fire(session, spec, now)
    jobs = claim_pending(session, now, fire_ids=[fire_id])
    if not jobs:  # a scheduler pass holds a live claim on a fire of this spec
        session.rollback()
        raise Conflict(f"a {CREATE_BACKUP} workflow is being started for {name!r}; try again")
    session.commit()  # no transaction stays open across calls to Conductor
    (job,) = jobs
    start = start_manual_fire(services, job)
    outcome = start.outcome
    if outcome.status is FireStatus.STARTED:
        assert outcome.workflow_id is not None
        log.info("backup spec %s: manual %s %s started", name, CREATE_BACKUP, outcome.workflow_id)
        return TriggerAccepted(name=name, workflowId=outcome.workflow_id)
    if outcome.status is FireStatus.SKIPPED:
        running = f": {outcome.workflow_id}" if outcome.workflow_id else ""
        raise Conflict(f"a {CREATE_BACKUP} workflow is already running for {name!r}{running}")
    if start.unconfirmed:
        # The start's answer was lost and Conductor cannot say whether it happened: closing
        # the fire could leave a run untracked, so the scheduler settles it (adopts or starts).
        raise ConductorUnavailable(
            "Conductor did not answer the start and cannot be asked whether it happened: the "
            "backup may have started. Its fire is left pending: the scheduler adopts the "
            "backup if it started, or starts it, once Conductor answers"
        )
    # Not started: the fire is closed, so that no later tick starts a backup nobody waits for.
    give_up_fire(session, fire_id, services.clock())
    if outcome.refused:
        raise StartRefused(f"Conductor refused to start the backup: {outcome.error}")
    raise ConductorUnavailable("Conductor cannot be reached; no backup was started")
