"""What the routes need from the process: the same Services the scheduler runs on.

The app factory stores one `Services` in `app.state.backtor`; routes get it, or a session
from it, through these dependencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session

from backtor.runtime.services import Services


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.backtor
    return services


def get_services(request: Request) -> Services:
    return services_of(request.app)


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; whatever was not committed is rolled back at the end."""
    with get_services(request).db() as session:
        yield session


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
