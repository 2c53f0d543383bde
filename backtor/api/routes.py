"""The /backup routes: parse, call backtor.core.specs and backtor.db, answer. Nothing else."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Query, Request, Response, status
from pydantic.json_schema import WithJsonSchema
from sqlalchemy.orm import Session

from backtor.api.common import (
    DEFAULT_PAGE_SIZE,
    PAGE_200,
    PAGE_QUERY,
    BackupAfter,
    PageLimit,
    SpecAfter,
    SpecPath,
    errors,
    json_answer,
    link_next,
    only_query,
    parse_backup_cursor,
)
from backtor.api.context import ReadsDep, ServicesDep, SessionDep
from backtor.api.errors import StartRefused
from backtor.api.patterns import one_of_any_case
from backtor.api.schemas import (
    OVERLAP_POLICIES,
    OVERLAP_RULE,
    SPEC_EXAMPLES,
    BackupOut,
    PurgeAccepted,
    SpecCreate,
    SpecIn,
    SpecOut,
    TriggerAccepted,
    backups_json,
    spec_json,
    specs_json,
)
from backtor.conductor.names import CREATE_BACKUP
from backtor.core.errors import ConductorUnavailable, Conflict, InvalidField
from backtor.core.policy import Tier
from backtor.core.specs import NAME_PATTERN, normalise_spec, parse_overlap_policy
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
from backtor.scheduling.recording import rescue_kept

log = logging.getLogger(__name__)


router = APIRouter(tags=["backup"])

SpecBody = Annotated[SpecIn, Body(openapi_examples=SPEC_EXAMPLES)]
NewSpecBody = Annotated[SpecCreate, Body(openapi_examples=SPEC_EXAMPLES)]
# Filters of /materialized, any case (`failed` is FAILED), as the schema's patterns say.
STATUS_PATTERN = one_of_any_case(s.value for s in BackupStatus)
TAG_PATTERN = one_of_any_case(t.value for t in Tier)
SPEC_NOT_FOUND = "No such backup spec"
StatusText = Annotated[str, WithJsonSchema({"type": "string", "pattern": STATUS_PATTERN})]


@router.get(
    "/backup",
    response_model=list[SpecOut],
    responses={**errors(), **PAGE_200},
    dependencies=[only_query("enabled", *PAGE_QUERY)],
)
def list_specs(
    request: Request,
    reads: ReadsDep,
    enabled: Annotated[
        Literal["0", "1"] | None, Query(description="1: only enabled specs; 0: only disabled")
    ] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    after: SpecAfter = None,
) -> Response:
    """Backup specs ordered by name, a page at a time (`after`: the last name seen)."""
    if after is not None and not re.fullmatch(NAME_PATTERN, after, re.ASCII):
        raise InvalidField("after", "after must be a spec name (the last of the previous page)")
    flag = None if enabled is None else enabled == "1"
    with reads.connect() as connection:
        specs = repository.list_spec_rows(connection, enabled=flag, after=after, limit=limit + 1)
    answer = json_answer(specs_json(specs[:limit]))
    if len(specs) > limit:
        link_next(request, answer, specs[limit - 1].name)
    return answer


@router.post(
    "/backup",
    status_code=status.HTTP_201_CREATED,
    response_model=SpecOut,
    responses=errors(400, 409, e409="A spec with this name exists"),
    dependencies=[only_query()],
)
def create_spec(
    body: NewSpecBody, response: Response, session: SessionDep, services: ServicesDep
) -> SpecOut:
    """Create a backup spec; 409 when the name is taken."""
    values = normalise_spec(
        body.to_draft(body.name), default_jitter_seconds=services.settings.jitter_seconds
    )
    body.check_cron_syntax()
    spec = repository.create_spec(session, values, services.clock())  # SpecExists: 409
    session.commit()
    response.headers["Location"] = f"/backup/{quote(spec.name, safe='')}"
    return SpecOut.of(spec)


def _replace(session: Session, services: Services, name: str, body: SpecIn) -> SpecOut:
    if body.name is not None and body.name != name:
        # A representation inconsistent with its target: 409, as RFC 9110 (9.3.4) suggests
        # for a PUT; no schema can say "equal to the path", the operation's text says it.
        raise Conflict(
            "name in the body must match the name in the path (renaming is not supported)",
            "name",
        )
    values = normalise_spec(
        body.to_draft(name), default_jitter_seconds=services.settings.jitter_seconds
    )
    body.check_cron_syntax()
    spec = repository.require_spec(session, name, for_update=True)
    if spec.deleting:
        raise Conflict(f"backup spec {name!r} is being purged and cannot change", "name")
    now = services.clock()
    if repository.changes_schedule(spec, values):
        settle_due_fire(session, spec, now)
    repository.replace_spec(session, spec, values, now)
    # A policy change may keep EXPIRING backups again: they go back to COMPLETED at once.
    rescue_kept(session, spec)
    session.commit()
    return SpecOut.of(spec)


REPLACE_409 = (
    "A purge of the spec is under way, or the body's `name` is not the path's (a spec "
    "cannot be renamed)"
)


@router.put(
    "/backup/{name}",
    response_model=SpecOut,
    responses=errors(400, 404, 409, e404=SPEC_NOT_FOUND, e409=REPLACE_409),
    dependencies=[only_query()],
)
def replace_spec(
    name: SpecPath, body: SpecBody, session: SessionDep, services: ServicesDep
) -> SpecOut:
    """Replace a spec entirely: an omitted optional field goes back to its default.

    The body's `name` may be left out; when sent, it must equal the path's `name` (a spec
    cannot be renamed): another name is answered 409 with `field` "name".
    """
    return _replace(session, services, name, body)


@router.put(
    "/backup",
    response_model=SpecOut,
    responses=errors(400, 404, 409, e404=SPEC_NOT_FOUND, e409="A purge of the spec is under way"),
    dependencies=[only_query()],
)
def replace_spec_by_body(body: NewSpecBody, session: SessionDep, services: ServicesDep) -> SpecOut:
    """The seed's form of PUT: the body's `name` (required) names the spec to replace."""
    return _replace(session, services, body.name, body)


@router.get(
    "/backup/{name}",
    response_model=SpecOut,
    responses=errors(404, e404=SPEC_NOT_FOUND),
    dependencies=[only_query()],
)
def get_spec(name: SpecPath, reads: ReadsDep) -> Response:
    with reads.connect() as connection:
        spec = repository.spec_row(connection, name)
    return json_answer(spec_json(spec))


@router.delete(
    "/backup/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_model=None,
    responses={
        **errors(
            404,
            409,
            e404=SPEC_NOT_FOUND,
            e409="Backups not yet removed remain (DELETE with ?purge=true)",
        ),
        202: {"model": PurgeAccepted, "description": "Purge under way"},
        204: {"description": "Deleted"},
    },
    dependencies=[only_query("purge")],
)
def delete_spec(
    name: SpecPath,
    session: SessionDep,
    services: ServicesDep,
    purge: Annotated[
        bool, Query(description="Remove the spec's backups first, then delete the spec")
    ] = False,
) -> Response | PurgeAccepted:
    """Delete a spec; with backups not yet removed, only through `?purge=true`.

    A purge only writes: the spec is marked, its COMPLETED and EXPIRING backups go into the
    removal outbox (REMOVING, without waiting out a removal delay), and the scheduler's
    pass starts their remove_backup workflows under its per-pass limit. So a purge needs no
    Conductor and holds no lock across a call.
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
            "(RUNNING, COMPLETED, EXPIRING, REMOVING or REMOVE_FAILED); DELETE with "
            "?purge=true to "
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
            if not value.isascii():  # a dotless i upper-cases to I: ASCII case only
                raise ValueError(value)
            statuses.add(BackupStatus(value.upper()))
        except ValueError:
            allowed = ", ".join(s.value for s in BackupStatus)
            raise InvalidField("status", f"status must be one of {allowed}") from None
    return statuses


def _parse_tag(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        if not value.isascii():  # the Kelvin sign lowers to "k": ASCII case only
            raise ValueError(value)
        return Tier(value.lower()).value
    except ValueError:
        allowed = ", ".join(t.value for t in Tier)
        raise InvalidField("tag", f"tag must be one of {allowed}") from None


@router.get(
    "/backup/{name}/materialized",
    response_model=list[BackupOut],
    responses={
        **errors(404, e404="No such backup spec, or `after` names none of its backups"),
        **PAGE_200,
    },
    dependencies=[only_query("status", "tag", *PAGE_QUERY)],
)
def list_backups(
    name: SpecPath,
    request: Request,
    reads: ReadsDep,
    status_filter: Annotated[
        list[StatusText] | None,
        Query(
            alias="status",
            description=(
                "Only these statuses (repeat for several): "
                + ", ".join(s.value for s in BackupStatus)
                + ", in any case"
            ),
        ),
    ] = None,
    tag: Annotated[
        str | None,
        Query(
            description="Only backups with this retention tag: "
            + ", ".join(t.value for t in Tier)
            + ", in any case",
            json_schema_extra={"pattern": TAG_PATTERN},
        ),
    ] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    after: BackupAfter = None,
) -> Response:
    """The backups taken for this spec, newest first, a page at a time (`after`: an id)."""
    statuses = _parse_statuses(status_filter or [])
    tier = _parse_tag(tag)
    cursor = parse_backup_cursor(after)
    with reads.connect() as connection:
        backups = repository.list_backup_rows_by_name(
            connection,
            name,
            statuses=statuses,
            tag=tier,
            after=cursor,
            limit=limit + 1,
        )
    answer = json_answer(backups_json(backups[:limit]))
    if len(backups) > limit:
        link_next(request, answer, str(backups[limit - 1].id))
    return answer


@router.post(
    "/backup/{name}/materialized",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TriggerAccepted,
    response_model_exclude_unset=True,  # buffered and terminated only when they apply
    responses=errors(
        404,
        409,
        502,
        e404=SPEC_NOT_FOUND,
        e409="A backup of the spec is running or being started, or a purge is under way",
        e503=(
            "Conductor cannot be reached (no backup was started, or its start is unconfirmed: "
            "`message` says which), or the database cannot be reached or is not migrated"
        ),
    ),
    dependencies=[only_query("overlap")],
)
def trigger_backup(
    name: SpecPath,
    session: SessionDep,
    services: ServicesDep,
    overlap: Annotated[
        str | None,
        Query(
            description=f"Overrides the spec's overlapPolicy for this backup. {OVERLAP_RULE}.",
            json_schema_extra={"enum": OVERLAP_POLICIES},
        ),
    ] = None,
) -> TriggerAccepted:
    """Take a backup now, through the same fire ledger as scheduled backups.

    The fire is written and claimed in one transaction, so no scheduler pass ever sees it
    unclaimed: the pass cannot take it between this request's commit and its start (the
    claim then found nothing, and the request failed with a 500). Only a request that dies
    before its start leaves the fire to the scheduler, once the claim lapses (30 s).

    A start whose answer is lost is looked up in Conductor before the request answers
    (start_manual_fire): a run it created is reported (202), not left untracked behind a 503.

    While a backup runs, the spec's overlapPolicy decides (`?overlap=` overrides it): 409
    (skip, or bufferOne with a fire waiting already), 202 buffered, or 202 started.
    """
    policy = None if overlap is None else parse_overlap_policy("overlap", overlap)
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
    start = start_manual_fire(services, job, policy)
    outcome = start.outcome
    if outcome.status is FireStatus.STARTED:
        assert outcome.workflow_id is not None
        log.info("backup spec %s: manual %s %s started", name, CREATE_BACKUP, outcome.workflow_id)
        if outcome.terminated:
            return TriggerAccepted(
                name=name, workflowId=outcome.workflow_id, terminated=list(outcome.terminated)
            )
        return TriggerAccepted(name=name, workflowId=outcome.workflow_id)
    if outcome.status is FireStatus.PENDING and outcome.buffered:
        log.info("backup spec %s: manual backup buffered (overlapPolicy bufferOne)", name)
        return TriggerAccepted(name=name, workflowId=None, buffered=True)
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
