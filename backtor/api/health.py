"""Liveness and readiness probes (open even when a token is required)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from backtor.api.context import ServicesDep
from backtor.api.errors import ErrorBody, NotReady
from backtor.api.schemas import Health, Ready
from backtor.db.migrate import current_revisions, schema_problem

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """The process lives and serves requests; says nothing about its dependencies."""
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": ErrorBody}})
def ready(services: ServicesDep) -> Ready:
    """The database answers and its schema is at the newest migration."""
    try:
        with services.engine.connect() as connection:
            current = current_revisions(connection)
    except SQLAlchemyError as error:
        log.warning("readiness: database unreachable (%s)", type(error).__name__)
        raise NotReady("the database cannot be reached") from None
    problem = schema_problem(current)
    if problem is not None:
        raise NotReady(problem)
    return Ready(status="ready", revision=sorted(current))
