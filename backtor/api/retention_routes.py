"""Retention as an operator sees it: today's plan, a candidate policy's plan, and pins.

Nothing here removes a backup: removals start only in retention runs (backtor.scheduling.recording),
under the per-run cap. Plans are read from one query, so every decision has its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Path
from sqlalchemy.orm import Session

from backtor.api.common import ERROR_RESPONSES, only_query
from backtor.api.context import SessionDep
from backtor.api.schemas import (
    PREVIEW_EXAMPLES,
    BackupOut,
    PlannedBackup,
    PlanSummary,
    PolicyCandidateIn,
    PolicyFields,
    RetentionPlanOut,
    RetentionPreviewOut,
)
from backtor.core.policy import RetentionPolicy
from backtor.core.retention import BackupRecord, RetentionPlan, plan_retention
from backtor.core.specs import MAX_INT32, parse_retention, validate_timezone
from backtor.db import repository
from backtor.db.models import Backup, BackupSpec
from backtor.scheduling.pins import BackupNotFound, set_pinned
from backtor.scheduling.recording import policy_of

router = APIRouter(tags=["retention"])

CandidateBody = Annotated[PolicyCandidateIn, Body(openapi_examples=PREVIEW_EXAMPLES)]
BackupId = Annotated[str, Path(alias="id", description="The backup's id, as in /materialized")]


def _plan(backups: Sequence[Backup], policy: RetentionPolicy, timezone: str) -> RetentionPlan:
    records = [BackupRecord(str(b.id), b.scheduled_at, b.status, b.pinned) for b in backups]
    return plan_retention(records, policy, ZoneInfo(timezone))


def _view(
    spec: BackupSpec,
    backups: Sequence[Backup],
    plan: RetentionPlan,
    policy: RetentionPolicy,
    timezone: str,
) -> RetentionPlanOut:
    rows = {str(b.id): b for b in backups}
    planned = []
    for decision in plan.decisions:
        row = rows[decision.id]
        planned.append(
            PlannedBackup(
                id=row.id,
                dataId=row.data_id,
                status=row.status,
                scheduledTime=row.scheduled_at,
                tags=[tier.value for tier in decision.tags],
                action=decision.action,
                reasons=list(decision.reasons),
                pinned=row.pinned,
            )
        )
    return RetentionPlanOut(
        name=spec.name,
        timezone=timezone,
        policy=PolicyFields(**policy.to_fields()),
        summary=PlanSummary(
            keep=len(plan.keep_ids), remove=len(plan.remove_ids), ignore=len(plan.ignore_ids)
        ),
        backups=planned,
    )


@router.get(
    "/backup/{name}/retention",
    response_model=RetentionPlanOut,
    responses=ERROR_RESPONSES,
    dependencies=[only_query()],
)
def get_retention(name: str, session: SessionDep) -> RetentionPlanOut:
    """Today's plan for the spec's recorded backups, newest first; nothing is removed.

    The plan ignores the per-run cap: `remove` may list more than one run starts.
    """
    spec = repository.require_spec(session, name)
    backups = repository.list_backups(session, spec.id)
    policy = policy_of(spec)
    return _view(spec, backups, _plan(backups, policy, spec.timezone), policy, spec.timezone)


@router.post(
    "/backup/{name}/retention/preview",
    response_model=RetentionPreviewOut,
    responses=ERROR_RESPONSES,
    dependencies=[only_query()],
)
def preview_retention(name: str, body: CandidateBody, session: SessionDep) -> RetentionPreviewOut:
    """The plan a candidate policy would give, next to today's; nothing changes.

    Retention fields left out take their defaults, as in POST /backup; `timezone` left
    out is the spec's own.
    """
    if body.timezone is not None:  # checked in POST /backup's order: zone, then retention
        validate_timezone(body.timezone)
    policy = parse_retention(body.retention())
    spec = repository.require_spec(session, name)
    timezone = spec.timezone if body.timezone is None else body.timezone
    backups = repository.list_backups(session, spec.id)
    today = _plan(backups, policy_of(spec), spec.timezone)
    candidate = _plan(backups, policy, timezone)
    view = _view(spec, backups, candidate, policy, timezone)
    removes = candidate.remove_ids & today.keep_ids
    keeps = candidate.keep_ids & today.remove_ids
    return RetentionPreviewOut(
        **dict(view),
        additionalRemovals=[int(d.id) for d in candidate.decisions if d.id in removes],
        additionalKeeps=[int(d.id) for d in candidate.decisions if d.id in keeps],
    )


def _pin(session: Session, name: str, backup_id: str, pinned: bool) -> BackupOut:
    """Pin or unpin; set_pinned's errors (404 id, 409 not pinnable or purging) propagate."""
    spec = repository.require_spec(session, name)
    if not (backup_id.isascii() and backup_id.isdigit()) or int(backup_id) > MAX_INT32:
        raise BackupNotFound(name, backup_id)  # no row can have this id
    backup = set_pinned(session, spec, int(backup_id), pinned)
    session.commit()
    return BackupOut.of(backup)


@router.put(
    "/backup/{name}/materialized/{id}/pin",
    response_model=BackupOut,
    responses=ERROR_RESPONSES,
    dependencies=[only_query()],
)
def pin_backup(name: str, backup_id: BackupId, session: SessionDep) -> BackupOut:
    """Pin a COMPLETED backup: retention never removes it (repeating is harmless).

    The spec's tags are refreshed from the new plan; no removal is started.
    """
    return _pin(session, name, backup_id, True)


@router.delete(
    "/backup/{name}/materialized/{id}/pin",
    response_model=BackupOut,
    responses=ERROR_RESPONSES,
    dependencies=[only_query()],
)
def unpin_backup(name: str, backup_id: BackupId, session: SessionDep) -> BackupOut:
    """Unpin a backup (repeating is harmless): the next retention run may remove it.

    The spec's tags are refreshed from the new plan; no removal is started.
    """
    return _pin(session, name, backup_id, False)
