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

# The key of `session.info` under which every session of `Services.db` carries the settings.
SETTINGS_INFO = "backtor.settings"


@dataclass
class Services:
    settings: Settings
    engine: Engine
    db: sessionmaker[Session]
    conductor: Conductor
    clock: Callable[[], datetime] = field(default=utc_now)

    def __post_init__(self) -> None:
        # Code that only gets a session (say, recording a failed backup) finds the settings
        # on it: the notices it writes need the global receiver (backtor.scheduling.notices).
        configure = getattr(self.db, "configure", None)  # a test's stand-in factory may lack it
        if callable(configure):
            configure(info={SETTINGS_INFO: self.settings})

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
