"""Who may see /ui: the API's token, sent as a header or proven once through a small form.

With BACKTOR_API_TOKEN set, a request sees the pages when it carries
`Authorization: Bearer <token>` (as the API takes it) or the cookie the form sets. The
cookie does not hold the token: it holds an expiry and an HMAC of it keyed by the token, so
the browser never stores the secret, the cookie opens nothing but /ui (its Path, and the
API's middleware takes headers only), and a new token voids every cookie. Comparisons are
constant-time. The token only ever travels in a POST body or a header, never in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.responses import Response

from backtor.api.auth import token_matches

COOKIE = "backtor_ui"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 12 * 3600
# A login body is one short form: anything longer is refused unread.
MAX_FORM_BYTES = 8192
# Where a login may send the browser next: a /ui path and query, nothing that leaves the site.
_LOCAL_UI_TARGET = re.compile(r"/ui(?:/[A-Za-z0-9._~%/-]*)?(?:\?[A-Za-z0-9._~%&=+-]*)?")


def _digest(token: str, expires: int) -> str:
    message = f"backtor-ui-session:{expires}".encode()
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def session_cookie(token: str, now: datetime) -> str:
    """A cookie value good until SESSION_SECONDS after `now`."""
    expires = int(now.timestamp()) + SESSION_SECONDS
    return f"{expires}.{_digest(token, expires)}"


def cookie_valid(value: str | None, token: str, now: datetime) -> bool:
    """The cookie was made with this token and has not expired (constant-time compare)."""
    if not value:
        return False
    expires_text, _, given = value.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12):
        return False
    expires = int(expires_text)
    same = hmac.compare_digest(given.encode("utf-8"), _digest(token, expires).encode("utf-8"))
    return same and expires > now.timestamp()


def token_valid(given: str, token: str) -> bool:
    """The token typed into the form is the API's (constant-time compare)."""
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def allowed(request: Request, token: str | None, now: datetime) -> bool:
    """No token configured, or a valid Authorization header, or a valid cookie."""
    if not token:
        return True
    # Both checks run, so timing does not tell which one failed.
    by_header = token_matches(request.headers.get("authorization"), token)
    by_cookie = cookie_valid(request.cookies.get(COOKIE), token, now)
    return by_header or by_cookie


def signed_in_by_cookie(request: Request, token: str | None, now: datetime) -> bool:
    """A session from the form (the page then offers to sign out)."""
    return token is not None and cookie_valid(request.cookies.get(COOKIE), token, now)


def set_session(response: Response, request: Request, token: str, now: datetime) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Path=/ui;
    Secure when the page came over HTTPS."""
    response.set_cookie(
        COOKIE,
        session_cookie(token, now),
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def local_target(value: str | None) -> str:
    """A /ui path to go to after the form; anything else (another site, a scheme) is /ui."""
    if value and _LOCAL_UI_TARGET.fullmatch(value):
        return value
    return "/ui"


async def read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded login form's fields (the first value of each); None when too long."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    fields: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True):
        fields.setdefault(key, value)
    return fields
