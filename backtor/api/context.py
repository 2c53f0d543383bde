"""What the routes need from the process, built once by the app factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from backtor.api.removals import BackupRemovalStarter
from backtor.conductor.http import ConductorClient
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    conductor: ConductorClient
    removal_starter: BackupRemovalStarter
    clock: Callable[[], datetime]

    @property
    def services(self) -> Services:
        """The same view of the world the scheduler has, for the routes that start work."""
        return Services(
            settings=self.settings,
            engine=self.engine,
            db=self.sessions,
            conductor=self.conductor,
            clock=self.clock,
        )


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.backtor
    return context


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; whatever was not committed is rolled back at the end."""
    with get_context(request).sessions() as session:
        yield session


ContextDep = Annotated[ApiContext, Depends(get_context)]
SessionDep = Annotated[Session, Depends(get_session)]
