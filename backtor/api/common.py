"""What every route module shares: the documented error answers, the query check, pages."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, Path, Query, Request, Response

from backtor.api.errors import ErrorBody
from backtor.api.patterns import BACKUP_ID_PATTERN, NAME, NAME_RULE
from backtor.core.errors import InvalidField
from backtor.core.specs import MAX_INT32
from backtor.db.repository import CursorNotFound
from backtor.scheduling.pins import BackupNotFound

Responses = dict[int | str, dict[str, Any]]

# What each error status means, wherever it is declared; a route lists the ones it returns.
ERROR_MEANINGS: dict[int, str] = {
    400: "The body is not JSON",
    401: "Missing or wrong bearer token (only when BACKTOR_API_TOKEN is set)",
    404: "No such backup spec",
    409: "Conflict with the stored state",
    422: "A field or query parameter breaks a rule (an unknown one included); `field` names it",
    502: "Conductor refused the request (its answer is in `message`)",
    503: (
        "The database cannot be reached, or its schema is not the one this Backtor needs "
        "(`message` names the revisions and the command); retry later"
    ),
}


def errors(*codes: int, **meanings: str) -> Responses:
    """The documented error answers of one route: `{"message", "field"}` bodies.

    Every route can answer 401, 422 (unknown query parameters are refused) and 503 (the
    database); `codes` adds the route's own, `meanings` (`e404=...`) words them for it.
    """
    chosen = sorted({401, 422, 503, *codes})
    return {
        code: {"model": ErrorBody, "description": meanings.get(f"e{code}", ERROR_MEANINGS[code])}
        for code in chosen
    }


def only_query(*allowed: str) -> Any:
    """Refuse unknown query parameters: `?enabeld=0` must not quietly list everything.

    `async`: no I/O, so it runs on the event loop instead of costing a thread hop.
    """

    async def check(request: Request) -> None:
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
# The 200 of a paged route: one page, and the `Link` header to the next.
PAGE_200: Responses = {
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
SpecPath = Annotated[
    str, Path(description=f"The spec's name ({NAME_RULE})", json_schema_extra={"pattern": NAME})
]
SpecAfter = Annotated[
    str | None,
    Query(
        description="Cursor: the last spec name of the previous page (it need not exist any more)",
        json_schema_extra={"pattern": NAME},
    ),
]
BackupAfter = Annotated[
    str | None,
    Query(
        description=(
            "Cursor: the id of the last backup of the previous page (from its `Link` header); "
            'an id that is not one of this spec\'s backups is answered 404, `field` "after"'
        ),
        json_schema_extra={"pattern": BACKUP_ID_PATTERN},
    ),
]


def json_answer(content: bytes) -> Response:
    """A 200 with a JSON body already serialized by the route's response model."""
    return Response(content=content, media_type="application/json")


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
    """`after` on the backup listings: a backup id, as digits (the query's pattern).

    Digits beyond any id a row can have name no backup: the 404 of a cursor not found,
    found without a query (and without int() on thousands of digits).
    """
    if after is None:
        return None
    if not (after.isascii() and after.isdigit()):
        raise InvalidField("after", "after must be a backup id (the last of the previous page)")
    digits = after.lstrip("0") or "0"
    if len(digits) > len(str(MAX_INT32)) or int(digits) > MAX_INT32:
        raise CursorNotFound(f"after: {after} is not the id of one of the spec's backups")
    return int(digits)


def parse_backup_id(name: str, backup_id: str) -> int:
    """A backup id of a path: digits naming a possible row, else the backup's 404."""
    digits = backup_id.lstrip("0") or "0"
    possible = backup_id.isascii() and backup_id.isdigit() and len(digits) <= len(str(MAX_INT32))
    if not possible or int(digits) > MAX_INT32:
        raise BackupNotFound(name, backup_id)
    return int(digits)
