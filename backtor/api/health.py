"""Liveness and readiness probes (open even when a token is required)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from backtor.api.context import ContextDep
from backtor.api.errors import ApiError, ErrorBody
from backtor.api.schemas import Health, Ready
from backtor.db.migrate import current_revisions, head_revisions

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """The process lives and serves requests; says nothing about its dependencies."""
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": ErrorBody}})
def ready(context: ContextDep) -> Ready:
    """The database answers and its schema is at the newest migration."""
    try:
        with context.engine.connect() as connection:
            current = current_revisions(connection)
    except SQLAlchemyError as error:
        log.warning("readiness: database unreachable (%s)", type(error).__name__)
        raise ApiError(503, "the database cannot be reached") from None
    heads = head_revisions()
    if current != heads:
        raise ApiError(
            503,
            f"the database is at revision {', '.join(sorted(current)) or 'none'}, not at "
            f"{', '.join(sorted(heads))}: run `backtor migrate`",
        )
    return Ready(status="ready", revision=sorted(current))
