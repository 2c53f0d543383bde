"""`GET /metrics` and the API's own request counter (backtor_api_invocations_total)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backtor.api.context import services_of
from backtor.conductor.http import ConductorClient
from backtor.observability.aggregated import AggregatedCollector
from backtor.observability.collector import ConductorProbe, MetricsCollector
from backtor.observability.exposition import CONTENT_TYPE
from backtor.observability.telemetry import API_INVOCATIONS, instrument_engine

# A scrape waits at most this long for Conductor's /health (the API's own client waits longer).
PROBE_TIMEOUT_SECONDS = 2.0


def install_metrics(app: FastAPI) -> None:
    """Serve /metrics from the app's database, count requests and SQL statements."""
    services = services_of(app)
    prober = ConductorClient(
        services.settings.conductor_api_url, timeout=PROBE_TIMEOUT_SECONDS, pool_size=1
    )
    # BACKTOR_METRICS_MODE: a series set per spec (default), or the fleet's figures only.
    kind = (
        AggregatedCollector if services.settings.metrics_mode == "aggregated" else MetricsCollector
    )
    collector = kind(
        services.db,
        conductor_up=ConductorProbe(prober.is_healthy),
        clock=services.clock,
    )
    instrument_engine(services.engine)
    app.state.metrics = collector

    # A plain def: FastAPI runs it in its thread pool, so the queries never block the loop.
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(collector.exposition(), media_type=CONTENT_TYPE)

    app.add_middleware(RequestCounter, templates=lambda: app.openapi().get("paths", {}))


def entity_of(route_path: str | None) -> str:
    """The resource a route serves: the last fixed segment of its path template.

    `/backup/{name}/materialized` -> `materialized`; `/backup/{name}` -> `backup`. Paths that
    matched no route count as `unknown`, so a scanner cannot create series at will.
    """
    if route_path is None:
        return "unknown"
    fixed = [part for part in route_path.split("/") if part and not part.startswith("{")]
    return fixed[-1].removesuffix(".json") if fixed else "root"


class RequestCounter:
    """Pure ASGI middleware: counts every HTTP response by entity and status code.

    Outermost, so answers that never reach a route (401 from the token check) count too:
    their entity comes from matching the path against the API's route templates.
    """

    def __init__(self, app: ASGIApp, templates: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self._templates = templates
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or self._template_of(str(scope["path"]))
            API_INVOCATIONS.labels(entity=entity_of(template), status=str(status["code"])).inc()

    def _template_of(self, path: str) -> str | None:
        if self._patterns is None:  # built on first use: routes are added after the middleware
            self._patterns = [
                (re.compile("^" + re.sub(r"\{[^}/]+\}", "[^/]+", template) + "$"), template)
                for template in self._templates()
            ]
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return None
