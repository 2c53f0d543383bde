"""The /backup routes: parse, call backtor.core.specs and backtor.db, answer. Nothing else."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Query, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backtor.api.context import ApiContext, ContextDep, SessionDep
from backtor.api.errors import ApiError, ErrorBody
from backtor.api.schemas import (
    SPEC_EXAMPLES,
    BackupOut,
    PurgeAccepted,
    SpecIn,
    SpecOut,
    TriggerAccepted,
)
from backtor.core.errors import ConductorRefused, ConductorUnavailable
from backtor.core.policy import Tier
from backtor.core.specs import normalise_spec
from backtor.db import repository
from backtor.db.models import BackupSpec, BackupStatus, FireStatus
from backtor.scheduling.fires import add_manual_fire, claim_pending, give_up_fire, start_fires

log = logging.getLogger(__name__)

CREATE_WORKFLOW = "create_backup"

router = APIRouter(tags=["backup"])

SpecBody = Annotated[SpecIn, Body(openapi_examples=SPEC_EXAMPLES)]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON",
        401: "Missing or wrong bearer token",
        404: "No such backup spec",
        409: "Conflict with the stored state",
        422: "A field breaks a rule; `field` names it",
        503: "Conductor or the database cannot be reached",
    }.items()
}


def _only_query(*allowed: str) -> Any:
    """Refuse unknown query parameters: `?enabeld=0` must not quietly list everything."""

    def check(request: Request) -> None:
        for key in request.query_params:
            if key not in allowed:
                known = ", ".join(allowed) or "none"
                raise ApiError(422, f"unknown query parameter {key!r} (known: {known})", key)

    return Depends(check)


def _not_found(name: str) -> ApiError:
    return ApiError(404, f"backup spec {name!r} not found", "name")


def _require_spec(session: Session, name: str, *, for_update: bool = False) -> BackupSpec:
    spec = repository.get_spec(session, name, for_update=for_update)
    if spec is None:
        raise _not_found(name)
    return spec


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@router.get(
    "/backup",
    response_model=list[SpecOut],
    responses=_ERRORS,
    dependencies=[_only_query("enabled")],
)
def list_specs(
    session: SessionDep,
    enabled: Annotated[
        Literal["0", "1"] | None, Query(description="1: only enabled specs; 0: only disabled")
    ] = None,
) -> list[SpecOut]:
    """All backup specs, ordered by name."""
    flag = None if enabled is None else enabled == "1"
    return [SpecOut.of(spec) for spec in repository.list_specs(session, enabled=flag)]


@router.post(
    "/backup",
    status_code=status.HTTP_201_CREATED,
    response_model=SpecOut,
    responses=_ERRORS,
    dependencies=[_only_query()],
)
def create_spec(
    body: SpecBody, response: Response, session: SessionDep, context: ContextDep
) -> SpecOut:
    """Create a backup spec; 409 when the name is taken."""
    if body.name is None:
        raise ApiError(422, "name is required", "name")
    values = normalise_spec(body.to_draft(body.name))
    try:
        spec = repository.create_spec(session, values, context.clock())
        session.commit()
    except (repository.SpecExists, IntegrityError):
        session.rollback()
        raise ApiError(409, f"backup spec {values.name!r} already exists", "name") from None
    response.headers["Location"] = f"/backup/{quote(spec.name, safe='')}"
    return SpecOut.of(spec)


def _replace(session: Session, context: ApiContext, name: str, body: SpecIn) -> SpecOut:
    if body.name is not None and body.name != name:
        raise ApiError(
            422,
            "name in the body must match the name in the path (renaming is not supported)",
            "name",
        )
    values = normalise_spec(body.to_draft(name))
    spec = _require_spec(session, name, for_update=True)
    if spec.deleting:
        raise ApiError(409, f"backup spec {name!r} is being purged and cannot change", "name")
    repository.replace_spec(session, spec, values, context.clock())
    session.commit()
    return SpecOut.of(spec)


@router.put(
    "/backup/{name}", response_model=SpecOut, responses=_ERRORS, dependencies=[_only_query()]
)
def replace_spec(name: str, body: SpecBody, session: SessionDep, context: ContextDep) -> SpecOut:
    """Replace a spec entirely: an omitted optional field goes back to its default."""
    return _replace(session, context, name, body)


@router.put("/backup", response_model=SpecOut, responses=_ERRORS, dependencies=[_only_query()])
def replace_spec_by_body(body: SpecBody, session: SessionDep, context: ContextDep) -> SpecOut:
    """The seed's form of PUT: the name comes from the body."""
    if body.name is None:
        raise ApiError(422, "name is required", "name")
    return _replace(session, context, body.name, body)


@router.get(
    "/backup/{name}", response_model=SpecOut, responses=_ERRORS, dependencies=[_only_query()]
)
def get_spec(name: str, session: SessionDep) -> SpecOut:
    return SpecOut.of(_require_spec(session, name))


@router.delete(
    "/backup/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_model=None,
    responses={
        **_ERRORS,
        202: {"model": PurgeAccepted, "description": "Purge under way"},
        204: {"description": "Deleted"},
    },
    dependencies=[_only_query("purge")],
)
def delete_spec(
    name: str,
    session: SessionDep,
    context: ContextDep,
    purge: Annotated[
        bool, Query(description="Remove the spec's backups first, then delete the spec")
    ] = False,
) -> Response | PurgeAccepted:
    """Delete a spec; with backups not yet removed, only through `?purge=true`."""
    spec = _require_spec(session, name, for_update=True)
    pending = repository.count_unremoved_backups(session, spec.id)
    if pending == 0:
        repository.delete_spec(session, spec.id)
        session.commit()
        log.info("backup spec %s deleted", name)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if not purge:
        raise ApiError(
            409,
            f"backup spec {name!r} still has {pending} backup(s) that were not removed "
            "(RUNNING, COMPLETED, REMOVING or REMOVE_FAILED); DELETE with ?purge=true to "
            "remove them and then the spec",
        )
    spec_id = spec.id
    repository.mark_purging(session, spec, context.clock())
    session.commit()
    log.info("backup spec %s: purge requested, %d backup(s) to remove", name, pending)
    try:
        context.removal_starter.start_removals(name)
    except ConductorUnavailable:
        raise ApiError(
            503,
            f"backup spec {name!r} is disabled and marked for deletion, but Conductor cannot "
            "be reached to start the removals; repeat the request",
        ) from None
    except ConductorRefused as error:
        raise ApiError(502, f"Conductor refused to start a removal: {error}") from None
    if repository.finish_purge_if_done(session, spec_id):
        session.commit()
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    session.rollback()
    remaining = repository.count_unremoved_backups(session, spec_id)
    body = PurgeAccepted(
        name=name,
        message="purge under way: the spec is deleted once its last backup is removed",
        pendingBackups=remaining,
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
            raise ApiError(422, f"status must be one of {allowed}", "status") from None
    return statuses


def _parse_tag(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return Tier(value.lower()).value
    except ValueError:
        allowed = ", ".join(t.value for t in Tier)
        raise ApiError(422, f"tag must be one of {allowed}", "tag") from None


@router.get(
    "/backup/{name}/materialized",
    response_model=list[BackupOut],
    responses=_ERRORS,
    dependencies=[_only_query("status", "tag")],
)
def list_backups(
    name: str,
    session: SessionDep,
    status_filter: Annotated[
        list[str] | None,
        Query(alias="status", description="Only these statuses (repeat for several)"),
    ] = None,
    tag: Annotated[str | None, Query(description="Only backups with this retention tag")] = None,
) -> list[BackupOut]:
    """The backups taken for this spec, newest first."""
    statuses = _parse_statuses(status_filter or [])
    tier = _parse_tag(tag)
    spec = _require_spec(session, name)
    backups = repository.list_backups(session, spec.id, statuses=statuses, tag=tier)
    return [BackupOut.of(backup) for backup in backups]


@router.post(
    "/backup/{name}/materialized",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TriggerAccepted,
    responses=_ERRORS,
    dependencies=[_only_query()],
)
def trigger_backup(name: str, session: SessionDep, context: ContextDep) -> TriggerAccepted:
    """Take a backup now, through the same fire ledger as scheduled backups."""
    spec = _require_spec(session, name)
    if spec.deleting:
        raise ApiError(409, f"backup spec {name!r} is being purged", "name")
    fire_id = add_manual_fire(session, spec, context.clock())
    session.commit()  # no transaction stays open across calls to Conductor
    with context.sessions.begin() as claiming:
        jobs = claim_pending(claiming, context.clock(), fire_ids=[fire_id])
    (outcome,) = start_fires(context.services, jobs)
    if outcome.status is FireStatus.STARTED:
        assert outcome.workflow_id is not None
        log.info("backup spec %s: manual %s %s started", name, CREATE_WORKFLOW, outcome.workflow_id)
        return TriggerAccepted(name=name, workflowId=outcome.workflow_id)
    if outcome.status is FireStatus.SKIPPED:
        running = f": {outcome.workflow_id}" if outcome.workflow_id else ""
        raise ApiError(
            409, f"a {CREATE_WORKFLOW} workflow is already running for {name!r}{running}"
        )
    # Not started: the fire is closed, so that no later tick starts a backup nobody waits for.
    give_up_fire(session, fire_id, context.clock())
    if outcome.refused:
        raise ApiError(502, f"Conductor refused to start the backup: {outcome.error}")
    raise ApiError(503, "Conductor cannot be reached; no backup was started")
