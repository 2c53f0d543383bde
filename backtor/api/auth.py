"""Bearer-token access control for the API (BACKTOR_API_TOKEN)."""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from backtor.api.errors import error_response

# Probes and scrapers carry no token; they reveal nothing about the specs.
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
# The /ui pages check the same token themselves (the header, or the cookie their sign-in form
# sets for a browser, which cannot send a header): backtor.api.ui.
SELF_CHECKED_PREFIX = "/ui"


def checks_itself(path: str) -> bool:
    """`/ui` and every path under it (not `/uix`)."""
    return path == SELF_CHECKED_PREFIX or path.startswith(SELF_CHECKED_PREFIX + "/")


def token_matches(header: str | None, expected: str) -> bool:
    """True when `header` is `Bearer <expected>`, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    # Compare even on a wrong scheme, so timing does not tell the two failures apart.
    same = hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))
    return scheme.lower() == "bearer" and same


def install_auth(app: FastAPI, token: str | None) -> None:
    """Require the token on every route but OPEN_PATHS; no token, no check."""
    if not token:
        return
    app.add_middleware(TokenCheck, token=token)


class TokenCheck:
    """Pure ASGI middleware: a request without the token gets the 401, and goes no further.

    Not `@app.middleware("http")` (Starlette's BaseHTTPMiddleware), which runs the rest of
    the app in a task of its own and streams the answer back through it: a third of a
    millisecond per request, on every route, probes included (docs/performance.md, "API").
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)
        path = request.url.path
        if (
            path in OPEN_PATHS
            or checks_itself(path)
            or token_matches(request.headers.get("authorization"), self._token)
        ):
            await self.app(scope, receive, send)
            return
        answer = error_response(
            401,
            "a valid 'Authorization: Bearer <token>' header is required",
            "Authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await answer(scope, receive, send)
