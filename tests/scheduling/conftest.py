"""A scheduling core on SQLite and the Conductor twin, in simulated time: no server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert

from backtor.conductor.registration import register_definitions
from backtor.conductor.twin import ConductorTwin, ManualClock
from backtor.core.specs import SpecDraft, normalise_spec
from backtor.db import repository
from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import head_revisions
from backtor.db.models import SCHEDULER_STATE_ID, BackupSpec, Base, SchedulerState
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings


@dataclass
class Core:
    services: Services
    twin: ConductorTwin
    clock: ManualClock

    def now(self) -> datetime:
        return self.clock()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def add_spec(self, name: str, **fields: Any) -> BackupSpec:
        draft = SpecDraft(
            name=name,
            backup_cron_string=fields.pop("cron", "*/10 * * * * *"),
            worker_config=fields.pop("worker_config", "{}"),
            **fields,
        )
        with self.services.db.begin() as session:
            spec = repository.create_spec(session, normalise_spec(draft), self.now())
        return spec

    def due(self, name: str) -> datetime:
        with self.services.db() as session:
            spec = repository.get_spec(session, name)
            assert spec is not None and spec.next_fire_at is not None
            return spec.next_fire_at

    def advance_to(self, moment: datetime, plus: float = 0.0) -> None:
        self.advance((moment - self.now()).total_seconds() + plus)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    clock = ManualClock()
    twin = ConductorTwin(clock)
    register_definitions(twin)
    engine = make_engine(f"sqlite:///{tmp_path / 'backtor.db'}")
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(SchedulerState).values(id=SCHEDULER_STATE_ID))
        # The models are the migrations' head (tests/integration/test_migrations.py): say so,
        # as `backtor migrate` would, for the API's schema check.
        version = Table(
            "alembic_version", MetaData(), Column("version_num", String(32), primary_key=True)
        )
        version.create(connection)
        connection.execute(insert(version), [{"version_num": head} for head in head_revisions()])
    settings = Settings(
        conductor_api_url="http://twin/api",
        database_url=str(engine.url),
        data_dir=tmp_path,
        log_level="INFO",
        log_format="text",
        api_token=None,
        max_removals_per_run=20,
        removal_retry_seconds=30.0,
    )
    services = Services(
        settings=settings,
        engine=engine,
        db=make_session_factory(engine),
        conductor=twin,
        clock=clock,
    )
    yield Core(services, twin, clock)
    engine.dispose()


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
