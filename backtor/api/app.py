"""The app factory: everything the API depends on comes in here, so tests can swap it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from backtor import __version__
from backtor.api import health, restore_routes, retention_routes, routes, ui
from backtor.api.auth import install_auth
from backtor.api.context import SchemaCheck
from backtor.api.errors import install_error_handlers
from backtor.api.metrics import install_metrics
from backtor.conductor.http import ConductorClient
from backtor.conductor.port import Conductor
from backtor.db.engine import Reads, make_engine, make_session_factory
from backtor.db.migrate import SchemaGate
from backtor.db.types import utc_now
from backtor.runtime.services import Services
from backtor.runtime.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Backup specifications for Backtor, in the original tool's field names.
Errors are `{"message": ..., "field": ...}`. See docs/api.md for the full reference.
"""


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    conductor: Conductor | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    """Build the API on one `Services`. Whatever is not given is made from `settings`
    (default: the env).

    An engine or client made here is closed when the app shuts down; one passed in
    belongs to the caller.
    """
    settings = settings or Settings.from_env()
    own_engine = engine is None
    own_conductor = conductor is None
    engine = engine if engine is not None else make_engine(settings.database_url)
    if conductor is None:
        conductor = ConductorClient(settings.conductor_api_url)
    services = Services(
        settings=settings,
        engine=engine,
        db=make_session_factory(engine),
        conductor=conductor,
        clock=clock,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if own_conductor:
            services.conductor.close()
        if own_engine:
            services.engine.dispose()

    app = FastAPI(
        title="Backtor",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.backtor = services
    app.state.schema_gate = SchemaCheck(SchemaGate(engine))
    app.state.reads = Reads(engine)
    install_error_handlers(app)
    install_auth(app, settings.api_token)
    install_metrics(app)
    app.include_router(health.router)
    app.include_router(routes.router)
    app.include_router(retention_routes.router)
    app.include_router(restore_routes.router)
    app.include_router(ui.router)  # /ui: read-only pages, not in the OpenAPI document
    if not settings.api_token:
        log.warning("BACKTOR_API_TOKEN is not set: the API is open to anyone who can reach it")
    return app
