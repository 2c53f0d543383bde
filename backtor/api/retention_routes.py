"""Retention as an operator sees it: today's plan, a candidate policy's plan, and pins.

Nothing here removes a backup: removals start only in retention runs (backtor.scheduling.recording),
under the per-run cap. Plans read only the candidates (COMPLETED, EXPIRING); the rows shown
come a page at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, cast
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Path, Request, Response
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session

from backtor.api.common import (
    DEFAULT_PAGE_SIZE,
    PAGE_200,
    PAGE_QUERY,
    BackupAfter,
    PageLimit,
    SpecPath,
    errors,
    json_answer,
    link_next,
    only_query,
    parse_backup_cursor,
    parse_backup_id,
)
from backtor.api.context import ReadsDep, SessionDep
from backtor.api.patterns import BACKUP_ID_PATTERN
from backtor.api.schemas import (
    PREVIEW_EXAMPLES,
    BackupOut,
    PolicyCandidateIn,
    PolicyFields,
    RetentionPlanOut,
    RetentionPreviewOut,
    json_bytes,
)
from backtor.core.policy import RetentionPolicy
from backtor.core.retention import RetentionPlan, plan_retention
from backtor.core.specs import parse_retention, validate_timezone
from backtor.db import repository
from backtor.db.models import BackupSpec, BackupStatus
from backtor.scheduling.pins import set_pinned
from backtor.scheduling.recording import CANDIDATE_STATUSES, policy_of

router = APIRouter(tags=["retention"])

CandidateBody = Annotated[PolicyCandidateIn, Body(openapi_examples=PREVIEW_EXAMPLES)]
BackupId = Annotated[
    str,
    Path(
        alias="id",
        description="The backup's id, as in /materialized (digits; another value names none: 404)",
        json_schema_extra={"pattern": BACKUP_ID_PATTERN},
    ),
]
LISTED_404 = "No such backup spec, or `after` names none of its backups"


def _view(
    spec: Row[Any],
    page: Sequence[Row[Any]],
    plan: RetentionPlan,
    ignored: int,
    policy: RetentionPolicy,
    timezone: str,
) -> dict[str, Any]:
    """One page of the plan: `page` rows (any status) with their decisions; the summary is
    the whole plan's. The plan holds the candidates only (COMPLETED and EXPIRING); another
    row is `ignore`, as the plan over every row said (so is a row whose status changed
    between the reads). An EXPIRING row shows its expiresAt.

    RetentionPlanOut's fields, in its order, written as JSON directly (schemas.json_bytes)."""
    decisions = plan.by_id
    planned = []
    for row in page:
        decision = decisions.get(str(row.id)) if row.status in CANDIDATE_STATUSES else None
        planned.append(
            {  # PlannedBackup
                "id": row.id,
                "dataId": row.data_id,
                "status": row.status,
                "scheduledTime": row.scheduled_at,
                "tags": [tier.value for tier in decision.tags] if decision else [],
                "action": decision.action if decision else "ignore",
                "reasons": list(decision.reasons) if decision else [],
                "pinned": row.pinned,
                "expiresAt": row.expires_at if row.status == BackupStatus.EXPIRING else None,
            }
        )
    return {
        "name": spec.name,
        "timezone": timezone,
        "policy": PolicyFields.of(policy).model_dump(),
        "summary": {"keep": len(plan.keep_ids), "remove": len(plan.remove_ids), "ignore": ignored},
        "backups": planned,
    }


def _policy(spec: Row[Any]) -> RetentionPolicy:
    """The spec's stored policy (policy_of reads the columns by name: a row has them all)."""
    return policy_of(cast(BackupSpec, spec))


def _inputs(
    connection: Connection, spec: Row[Any], limit: int, after: int | None
) -> repository.PlanInputs:
    """One page of the spec's backups (every status), newest first, as /materialized pages
    (`limit + 1` rows: the last one only says that another page follows), the plan's input
    (completed_records) and the count of the backups it ignores."""
    return repository.plan_inputs(
        connection, spec.id, CANDIDATE_STATUSES, after=after, fetch=limit + 1
    )


def _answer(request: Request, view: dict[str, Any], page: list[Row[Any]], limit: int) -> Response:
    answer = json_answer(json_bytes(view))
    if len(page) > limit:
        link_next(request, answer, str(page[limit - 1].id))
    return answer


@router.get(
    "/backup/{name}/retention",
    response_model=RetentionPlanOut,
    responses={**errors(404, e404=LISTED_404), **PAGE_200},
    dependencies=[only_query(*PAGE_QUERY)],
)
def get_retention(
    name: SpecPath,
    request: Request,
    reads: ReadsDep,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    after: BackupAfter = None,
) -> Response:
    """Today's plan for the spec's recorded backups, newest first; nothing is removed.

    The plan ignores the per-run cap: `remove` may list more than one run starts. `backups`
    comes a page at a time (`after`: the last id seen); `summary` is the whole plan's.
    """
    cursor = parse_backup_cursor(after)
    with reads.connect() as connection:
        spec = repository.spec_row(connection, name)
        policy = _policy(spec)
        inputs = _inputs(connection, spec, limit, cursor)
        plan = plan_retention(inputs.candidates, policy, ZoneInfo(spec.timezone))
        view = _view(spec, inputs.page[:limit], plan, inputs.others, policy, spec.timezone)
        return _answer(request, view, inputs.page, limit)


@router.post(
    "/backup/{name}/retention/preview",
    response_model=RetentionPreviewOut,
    responses={**errors(400, 404, e404=LISTED_404), **PAGE_200},
    dependencies=[only_query(*PAGE_QUERY)],
)
def preview_retention(
    name: SpecPath,
    body: CandidateBody,
    request: Request,
    reads: ReadsDep,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    after: BackupAfter = None,
) -> Response:
    """The plan a candidate policy would give, next to today's; nothing changes.

    Retention fields left out take their defaults, as in POST /backup; `timezone` left
    out is the spec's own. `backups` is paged as in GET .../retention; the summary and
    both difference lists are the whole plans'.
    """
    if body.timezone is not None:  # checked in POST /backup's order: zone, then retention
        validate_timezone(body.timezone)
    policy = parse_retention(body.retention())
    cursor = parse_backup_cursor(after)
    with reads.connect() as connection:
        spec = repository.spec_row(connection, name)
        timezone = spec.timezone if body.timezone is None else body.timezone
        inputs = _inputs(connection, spec, limit, cursor)
        records = inputs.candidates  # both plans over the same candidates
        today = plan_retention(records, _policy(spec), ZoneInfo(spec.timezone))
        candidate = plan_retention(records, policy, ZoneInfo(timezone))
        view = _view(spec, inputs.page[:limit], candidate, inputs.others, policy, timezone)
        removes = candidate.remove_ids & today.keep_ids
        keeps = candidate.keep_ids & today.remove_ids
        view["additionalRemovals"] = [int(d.id) for d in candidate.decisions if d.id in removes]
        view["additionalKeeps"] = [int(d.id) for d in candidate.decisions if d.id in keeps]
        return _answer(request, view, inputs.page, limit)  # RetentionPreviewOut


def _pin(session: Session, name: str, backup_id: str, pinned: bool) -> BackupOut:
    """Pin or unpin; set_pinned's errors (404 id, 409 not pinnable or purging) propagate."""
    spec = repository.require_spec(session, name)
    backup = set_pinned(session, spec, parse_backup_id(name, backup_id), pinned)
    session.commit()
    return BackupOut.of(backup)


PIN_404 = "No such backup spec, or no such backup of it"


@router.put(
    "/backup/{name}/materialized/{id}/pin",
    response_model=BackupOut,
    responses=errors(
        404,
        409,
        e404=PIN_404,
        e409=(
            "The backup is not COMPLETED or EXPIRING (only those have data to keep), or a "
            "purge is under way"
        ),
    ),
    dependencies=[only_query()],
)
def pin_backup(name: SpecPath, backup_id: BackupId, session: SessionDep) -> BackupOut:
    """Pin a COMPLETED or EXPIRING backup: retention never removes it (repeating is
    harmless); an EXPIRING one becomes COMPLETED again (its removal is called off).

    The spec's tags are refreshed from the new plan; no removal is started.
    """
    return _pin(session, name, backup_id, True)


@router.delete(
    "/backup/{name}/materialized/{id}/pin",
    response_model=BackupOut,
    responses=errors(404, e404=PIN_404),
    dependencies=[only_query()],
)
def unpin_backup(name: SpecPath, backup_id: BackupId, session: SessionDep) -> BackupOut:
    """Unpin a backup (repeating is harmless): the next retention run may remove it.

    The spec's tags are refreshed from the new plan; no removal is started.
    """
    return _pin(session, name, backup_id, False)
