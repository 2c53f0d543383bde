"""What every route module shares: the documented error answers, the query check, pages."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, Query, Request, Response

from backtor.api.errors import ErrorBody
from backtor.core.errors import InvalidField
from backtor.core.specs import MAX_INT32

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


# Pages (docs/api.md, "Pages"): large enough that a client of a small install, which sends
# no `limit`, gets everything it got before pages existed; bounded so one request cannot
# make the process hold an unbounded list.
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
PAGE_QUERY = ("limit", "after")

PageLimit = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"Page size (1-{MAX_PAGE_SIZE}); the `Link` header names the next page",
    ),
]
# The documented answers of a paged route: the errors, and the `Link` header of a 200.
PAGED_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "One page; `Link` names the next one, if any",
        "headers": {
            "Link": {
                "description": '`</path?...&after=...>; rel="next"` when more items follow',
                "schema": {"type": "string"},
            }
        },
    },
}
PageAfter = Annotated[
    str | None,
    Query(description="Cursor: the last item of the previous page (from its `Link` header)"),
]


def link_next(request: Request, response: Response, cursor: str) -> None:
    """`Link: <...>; rel="next"`: this request's path and query, `after` set to `cursor`.

    A path-absolute reference, not a full URL: right whatever host and scheme a proxy in
    front shows the client.
    """
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
    query.append(("after", cursor))
    path = quote(request.url.path, safe="/")
    response.headers["Link"] = f'<{path}?{urlencode(query)}>; rel="next"'


def parse_backup_cursor(after: str | None) -> int | None:
    """`after` on the backup listings: a backup id, as digits."""
    if after is None:
        return None
    if not (after.isascii() and after.isdigit()) or int(after) > MAX_INT32:
        raise InvalidField("after", "after must be a backup id (the last of the previous page)")
    return int(after)
