"""What the routes need from the process: the same Services the scheduler runs on.

The app factory stores one `Services` in `app.state.backtor`; routes get it, or a session
from it, through these dependencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session

from backtor.db.migrate import SchemaGate
from backtor.runtime.services import Services


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.backtor
    return services


def get_services(request: Request) -> Services:
    return services_of(request.app)


def schema_gate_of(app: FastAPI) -> SchemaGate:
    gate: SchemaGate = app.state.schema_gate
    return gate


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; whatever was not committed is rolled back at the end.

    Only on a schema at head (SchemaNotReady, a 503 naming the revisions, otherwise): a
    missing table must not surface as "the database cannot be reached".
    """
    schema_gate_of(request.app).check()
    with get_services(request).db() as session:
        yield session


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
