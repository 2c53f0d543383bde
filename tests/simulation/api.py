"""The API's write paths, called as FastAPI would call the route functions.

Each request gets its own session (as backtor.api.context.get_session makes one) whose
commits are step boundaries, so a request can die just before or just after one. The
routes raise BacktorError subclasses for their 4xx/5xx answers; anything else escaping a
route is a 500, which the simulation reports as a failure.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response

from backtor.api import restore_routes, retention_routes, routes
from backtor.api.schemas import RestoreIn, SpecCreate
from backtor.core.specs import SpecDraft
from backtor.runtime.services import Services


def body_of(draft: SpecDraft) -> SpecCreate:
    """The JSON body a client sends for this draft (None fields left out)."""
    fields: dict[str, Any] = {
        "name": draft.name,
        "enabled": draft.enabled,
        "fromDate": draft.from_date,
        "toDate": draft.to_date,
        "backupCronString": draft.backup_cron_string,
        "timezone": draft.timezone,
        "workerConfig": draft.worker_config,
        "timeoutSeconds": draft.timeout_seconds,
        "misfireGraceSeconds": draft.misfire_grace_seconds,
        "overlapPolicy": draft.overlap_policy,
        "pausedReason": draft.paused_reason,
        "autoPauseAfterFailures": draft.auto_pause_after_failures,
        "removalDelaySeconds": draft.removal_delay_seconds,
        "jitterSeconds": draft.jitter_seconds,
        "verifyCronString": draft.verify_cron_string,
        "verifySampleRate": draft.verify_sample_rate,
        **draft.retention,
        # The scenarios' small policies may keep only the newest: that is meant here.
        "allowKeepNewestOnly": True,
    }
    return SpecCreate.model_validate({k: v for k, v in fields.items() if v is not None})


def create(services: Services, draft: SpecDraft) -> str:
    """POST /backup."""
    with services.db() as session:
        routes.create_spec(body_of(draft), Response(), session, services)
    return "201"


def replace(services: Services, draft: SpecDraft) -> str:
    """PUT /backup/{name}: a full replacement."""
    with services.db() as session:
        routes.replace_spec(draft.name, body_of(draft), session, services)
    return "200"


def delete_purge(services: Services, name: str) -> str:
    """DELETE /backup/{name}?purge=true."""
    with services.db() as session:
        answer = routes.delete_spec(name, session, services, purge=True)
    return str(getattr(answer, "status_code", 200))


def trigger(services: Services, name: str, overlap: str | None = None) -> str:
    """POST /backup/{name}/materialized[?overlap=…]: back up now."""
    with services.db() as session:
        accepted = routes.trigger_backup(name, session, services, overlap)
    return "202 buffered" if accepted.buffered else f"202 {accepted.workflowId}"


def pin(services: Services, name: str, backup_id: int, pinned: bool) -> str:
    """PUT or DELETE /backup/{name}/materialized/{id}/pin."""
    route = retention_routes.pin_backup if pinned else retention_routes.unpin_backup
    with services.db() as session:
        route(name, str(backup_id), session)
    return "200"


def restore_or_verify(services: Services, name: str, backup_id: int, kind: str) -> str:
    """POST /backup/{name}/materialized/{id}/restore (or /verify)."""
    with services.db() as session:
        if kind == "restore":
            body = RestoreIn(restoreConfig='{"target": "/restore/here"}')
            accepted = restore_routes.restore_backup(name, str(backup_id), body, session, services)
        else:
            accepted = restore_routes.verify_backup(name, str(backup_id), session, services)
    return f"202 {accepted.workflowId}"
