"""One error shape for every 4xx/5xx: `{"message": "...", "field": "..." | null}`.

Routes raise Backtor's own errors (backtor.core.errors) or let them propagate; STATUS_BY_ERROR
is the one place that says which HTTP status each class means. FastAPI's own 422 body (a
list of pydantic errors) is replaced too, so a client parses one shape whether a rule was
broken in a type, a query parameter or the domain.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backtor.api.context import SchemaCheck
from backtor.core.errors import (
    BacktorError,
    ConductorRefused,
    ConductorUnavailable,
    Conflict,
    InvalidField,
    NotFound,
)
from backtor.db.migrate import SchemaNotReady

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    message: str
    field: str | None = None


class NotReady(BacktorError):
    """The process cannot serve yet: its database is unreachable or not migrated."""


class StartRefused(BacktorError):
    """Conductor answered a start with an error (the fire's outcome keeps only its text)."""


# The one table: a raised class (or its nearest listed base) decides the status.
STATUS_BY_ERROR: Mapping[type[BacktorError], int] = MappingProxyType(
    {
        InvalidField: 422,  # SpecError, PolicyError
        NotFound: 404,  # SpecNotFound, BackupNotFound
        Conflict: 409,  # SpecExists, NotPinnable, SpecPurging
        ConductorUnavailable: 503,
        ConductorRefused: 502,  # ConductorNotFound included
        StartRefused: 502,
        NotReady: 503,
        SchemaNotReady: 503,
    }
)


def error_response(
    status_code: int,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status_code,
        content={"message": message, "field": field},
        headers=headers,
    )


def _field_of(loc: Sequence[Any]) -> str | None:
    """`("body", "timeoutSeconds")` -> "timeoutSeconds"; the body itself has no field."""
    parts = [str(part) for part in loc[1:] if not isinstance(part, int)]
    return ".".join(parts) if parts else None


def describe_validation_error(error: dict[str, Any]) -> tuple[int, str, str | None]:
    """Status, message and field for the first pydantic error of a request."""
    kind = str(error.get("type", ""))
    loc = tuple(error.get("loc", ()))
    field = _field_of(loc)
    where = loc[0] if loc else "body"
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return 400, f"request body is not valid JSON: {detail}".rstrip(": "), None
    if field is None and where == "body":
        if kind == "missing":
            return 422, "a JSON object is required as the request body", None
        if isinstance(error.get("input"), bytes):  # not sent as application/json
            return (
                422,
                "the request body must be a JSON object (Content-Type: application/json)",
                None,
            )
        return 422, "the request body must be a JSON object", None
    if kind == "extra_forbidden":
        return 422, f"unknown field {field!r} (field names are case-sensitive camelCase)", field
    if kind == "missing":
        return 422, f"{field} is required", field
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    return 422, f"{field}: {message}", field


def status_of(error: BacktorError) -> int | None:
    """The table's status for `error`: its own class's, or its nearest listed base's.

    None for a class the table does not list (a CronError that escaped its caller): a bug,
    answered 500 by the catch-all handler.
    """
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return None


UNREACHABLE = "the database cannot be reached; try again"


def explain_database_error(app: FastAPI, error: OperationalError | ProgrammingError) -> str | None:
    """The real cause of a database error, for a 503; None for a bug (a 500).

    The schema is looked at again first: a table that went missing is a schema behind its
    code, not an unreachable database.
    """
    gate: SchemaCheck | None = getattr(app.state, "schema_gate", None)
    if gate is not None:
        gate.forget()
        try:
            gate.check()
        except SchemaNotReady as problem:
            return problem.message
        except SQLAlchemyError:
            return UNREACHABLE
    if isinstance(error, ProgrammingError):
        return None
    said = str(error.orig).lower()
    if "locked" in said or "busy" in said:
        return "the database is busy (another writer holds its lock); try again"
    if gate is None:
        return UNREACHABLE
    return f"the database failed the request ({type(error.orig).__name__}); try again"


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HTTP_METHODS = frozenset(m.lower() for m in _METHOD_ORDER) | {"trace"}


@lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)))


def allowed_methods(request: Request, fallback: str | None) -> list[str]:
    """Every documented method of the resource at this path: the whole `Allow` of a 405.

    Starlette names only the methods of the first route whose path matches, but FastAPI
    makes one route per method: `OPTIONS /backup` would say `Allow: GET` and hide POST and
    PUT. The OpenAPI document has them all; a path it does not describe (/metrics, /ui)
    keeps Starlette's answer.
    """
    path = request.scope["path"]
    root = request.scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _template_pattern(template).fullmatch(path):
            methods.update(m.upper() for m in operations if m in _HTTP_METHODS)
    if not methods and fallback:
        methods = {m.strip().upper() for m in fallback.split(",") if m.strip()}
    return sorted(methods, key=lambda m: (*_METHOD_ORDER, m).index(m))


async def _backtor_error(_request: Request, exc: Exception) -> JSONResponse:
    # Installed only for the table's classes, so a status is always found.
    assert isinstance(exc, BacktorError)
    status = status_of(exc)
    assert status is not None
    return error_response(status, exc.message, getattr(exc, "field", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Engines hide bound parameters (hide_parameters), so no workerConfig reaches the log.
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.method,
        request.url.path,
        exc_info=exc,
    )
    return error_response(500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    # Starlette picks the handler of the nearest class in the exception's MRO, so one
    # handler per listed class keeps the table the only place that decides.
    for error_class in STATUS_BY_ERROR:
        app.add_exception_handler(error_class, _backtor_error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if not errors:
            return error_response(422, "the request is invalid")
        status, message, field = describe_validation_error(dict(errors[0]))
        return error_response(status, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = allowed_methods(request, headers.get("Allow"))
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed on {request.url.path}; allowed: " + (
                ", ".join(allowed)
            )
        return error_response(exc.status_code, message, None, headers)

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        # Unreachable, restarting, locked, or a schema changed underneath: worth a retry,
        # unlike a 500, and said as what it is.
        assert isinstance(exc, OperationalError | ProgrammingError)
        message = await run_in_threadpool(explain_database_error, request.app, exc)
        if message is None:
            return await _unexpected(request, exc)
        log.warning(
            "database error on %s %s: %s (%s)",
            request.method,
            request.url.path,
            message,
            type(exc.orig).__name__,
        )
        return error_response(503, message)

    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(ProgrammingError, _database_error)

    app.add_exception_handler(Exception, _unexpected)
