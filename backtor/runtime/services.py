"""What the scheduling code needs from the outside world, built once per process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from backtor.conductor.http import ConductorClient
from backtor.conductor.port import Conductor
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.types import utc_now
from backtor.runtime.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    db: sessionmaker[Session]
    conductor: Conductor
    clock: Callable[[], datetime] = field(default=utc_now)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        engine = make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            db=make_session_factory(engine),
            conductor=ConductorClient(settings.conductor_api_url),
        )

    def close(self) -> None:
        self.conductor.close()
        self.engine.dispose()
