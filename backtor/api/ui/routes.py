"""The /ui routes: a read-only page over the specs, their backups and retention plans.

Every route's handler is wrapped by `UiRoute`: the token check runs first (a login form
answers instead of the page), and Backtor's errors become HTML pages, not the API's JSON.
The API's token middleware lets /ui through for this (backtor.api.auth). None of these
routes is in the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import RedirectResponse, Response

from backtor.api.common import parse_backup_cursor
from backtor.api.context import SessionDep, services_of
from backtor.api.ui import access
from backtor.api.ui.html import esc, message_page, page, spec_url
from backtor.api.ui.pages import (
    BACKUPS_PER_PAGE,
    MAX_BACKUPS_PER_PAGE,
    SpecQuery,
    View,
    overview,
    spec_page,
)
from backtor.api.ui.timeline import Axis
from backtor.core.errors import InvalidField, NotFound
from backtor.core.specs import NAME_PATTERN
from backtor.runtime.services import Services

LOGIN = "/ui/login"
LOGOUT = "/ui/logout"
PUBLIC_PATHS = frozenset({LOGIN, LOGOUT})

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _services(request: Request) -> Services:
    return services_of(request.app)


def _view(request: Request) -> View:
    services = _services(request)
    return View(services.clock(), services.settings.conductor_ui_url)


def _signed_in(request: Request) -> bool:
    services = _services(request)
    return access.signed_in_by_cookie(request, services.settings.api_token, services.clock())


def login_page(
    request: Request, *, status_code: int, problem: str = "", target: str = ""
) -> Response:
    """The form that asks for the API's token; it posts it, so it never shows in a URL."""
    if not target:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    error = f'<p class="error" role="alert">{esc(problem)}</p>' if problem else ""
    body = (
        '<div class="card narrow"><h1>Sign in</h1>'
        "<p>This Backtor requires its API token (<code>BACKTOR_API_TOKEN</code>) to show its "
        "backups. It is checked once here; the browser then keeps a session cookie for "
        f"{access.SESSION_SECONDS // 3600} hours (never the token itself).</p>"
        f'{error}<form class="login" method="post" action="{LOGIN}">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        f'<input type="hidden" name="next" value="{esc(access.local_target(target))}">'
        '<button type="submit">Sign in</button></form></div>'
    )
    return page("Sign in", body, status_code=status_code, headers={"WWW-Authenticate": "Bearer"})


class UiRoute(APIRoute):
    """Checks the token before the handler runs; turns Backtor's errors into pages."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        public = self.path in PUBLIC_PATHS

        async def guarded(request: Request) -> Response:
            services = _services(request)
            if not public and not access.allowed(
                request, services.settings.api_token, services.clock()
            ):
                return login_page(request, status_code=401)
            try:
                return await handler(request)
            except NotFound as error:
                return message_page(404, "Not found", error.message, sign_out=_signed_in(request))
            except InvalidField as error:
                return message_page(400, "Bad request", error.message, sign_out=_signed_in(request))

        return guarded


router = APIRouter(route_class=UiRoute, include_in_schema=False)


def _only(request: Request, *allowed: str) -> None:
    """Refuse unknown query parameters, as the API does: a typo must not be ignored."""
    for key in request.query_params:
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidField(key, f"unknown query parameter {key!r} (known: {known})")


def _one(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise InvalidField(key, f"{key} is given more than once")
    return values[0] if values else None


@router.get("/ui")
def ui_overview(request: Request, session: SessionDep) -> Response:
    """Every spec with its state, a page of specs at a time (`after`: the last name seen)."""
    _only(request, "after")
    after = _one(request, "after")
    if after is not None and not re.fullmatch(NAME_PATTERN, after, re.ASCII):
        raise InvalidField("after", "after must be a spec name (the last of the previous page)")
    body = overview(session, _view(request), after)
    return page("Backup specs", body, sign_out=_signed_in(request))


def _spec_query(request: Request) -> SpecQuery:
    _only(request, "after", "limit", "removed", "axis")
    limit_text = _one(request, "limit")
    limit = BACKUPS_PER_PAGE
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit()) or not (
            1 <= int(limit_text) <= MAX_BACKUPS_PER_PAGE
        ):
            raise InvalidField(
                "limit", f"limit must be a whole number, 1 to {MAX_BACKUPS_PER_PAGE}"
            )
        limit = int(limit_text)
    removed = _one(request, "removed")
    if removed not in (None, "0", "1"):
        raise InvalidField("removed", "removed must be 1 (show removed backups too) or 0")
    axis = _one(request, "axis")
    if axis not in (None, "auto", "linear", "log"):
        raise InvalidField("axis", "axis must be auto, linear or log")
    chosen: Axis | None = None if axis in (None, "auto") else cast(Axis, axis)
    shown = None if removed is None else removed == "1"
    return SpecQuery(parse_backup_cursor(_one(request, "after")), limit, shown, chosen)


@router.get("/ui/spec/{name}")
def ui_spec(request: Request, name: str, session: SessionDep) -> Response:
    """One spec: its state, the plan's summary, and a page of its backups on the timeline."""
    asked = _spec_query(request)
    title, body = spec_page(session, _view(request), name, asked)
    link = f'<a href="{esc(spec_url(title))}">{esc(title)}</a>'
    crumbs = f'&rsaquo; <a href="/ui">specs</a> &rsaquo; {link}'
    return page(title, body, crumbs=crumbs, sign_out=_signed_in(request))


@router.get(LOGIN)
def ui_login_form(request: Request) -> Response:
    services = _services(request)
    target = access.local_target(_one(request, "next"))
    if not services.settings.api_token or _signed_in(request):
        return RedirectResponse(target, status_code=303)
    return login_page(request, status_code=200, target=target)


@router.post(LOGIN)
async def ui_login(request: Request) -> Response:
    """Check the token from the form; on success set the session cookie and go on."""
    services = _services(request)
    token = services.settings.api_token
    form = await access.read_form(request)
    if form is None:
        return message_page(413, "Too long", "the sign-in form is short; this was not it")
    target = access.local_target(form.get("next"))
    if not token:
        return RedirectResponse(target, status_code=303)
    if not access.token_valid(form.get("token", ""), token):
        return login_page(
            request, status_code=401, problem="That is not this Backtor's API token.", target=target
        )
    response = RedirectResponse(target, status_code=303)
    access.set_session(response, request, token, services.clock())
    return response


@router.post(LOGOUT)
def ui_logout(request: Request) -> Response:
    response = RedirectResponse(LOGIN, status_code=303)
    access.clear_session(response, request)
    return response


@router.get("/ui/{rest:path}")
def ui_unknown(request: Request, rest: str) -> Response:
    """Any other /ui path: behind the same check, then not found (`/ui/` goes to /ui)."""
    if not rest:
        return RedirectResponse("/ui", status_code=307)
    return message_page(404, "Not found", "there is no such page", sign_out=_signed_in(request))
