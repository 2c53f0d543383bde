"""What every route module shares: the documented error answers and the query check."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from backtor.api.errors import ErrorBody
from backtor.core.errors import InvalidField

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON",
        401: "Missing or wrong bearer token",
        404: "No such backup spec",
        409: "Conflict with the stored state",
        422: "A field breaks a rule; `field` names it",
        503: "Conductor or the database cannot be reached",
    }.items()
}


def only_query(*allowed: str) -> Any:
    """Refuse unknown query parameters: `?enabeld=0` must not quietly list everything."""

    def check(request: Request) -> None:
        for key in request.query_params:
            if key not in allowed:
                known = ", ".join(allowed) or "none"
                raise InvalidField(key, f"unknown query parameter {key!r} (known: {known})")

    return Depends(check)
