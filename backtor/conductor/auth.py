"""Credentials for a secured Conductor, one set for every call a Backtor process makes.

Two forms, alone or together (docs/configuration.md):

- an Orkes-style key and secret (`CONDUCTOR_AUTH_KEY`, `CONDUCTOR_AUTH_SECRET`): exchanged at
  `POST {CONDUCTOR_API_URL}/token` for a token (a JWT), sent as `X-Authorization` and fetched
  anew shortly before the JWT's `exp` (or every `CONDUCTOR_AUTH_REFRESH_MINUTES` when the
  token carries none), and at once after a 401;
- a static header for a gateway (`CONDUCTOR_AUTH_HEADER="Name: value"`), sent on every call,
  the token exchange included.

Backtor's REST client (backtor.conductor.http) and conductor-python's workers
(backtor.conductor.sdk) both take a `ConductorAuth`. Secrets stay out of reprs, logs and
error messages: only the key id and the header's name are ever shown.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import requests

from backtor.core.errors import (
    BacktorError,
    ConductorRefused,
    ConductorUnavailable,
    SettingError,
)
from backtor.observability import telemetry

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Authorization"  # noqa: S105  (a header name)
DEFAULT_REFRESH_MINUTES = 45.0
# A JWT is fetched anew this long before its exp (at most a fifth of its lifetime).
REFRESH_MARGIN_SECONDS = 60.0
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class ConductorAuth:
    """Conductor's credentials; `None` in their place means an open server."""

    key_id: str | None = None
    key_secret: str | None = field(default=None, repr=False)
    header_name: str | None = None
    header_value: str | None = field(default=None, repr=False)
    refresh_minutes: float = DEFAULT_REFRESH_MINUTES

    def __post_init__(self) -> None:
        if (self.key_id is None) != (self.key_secret is None):
            raise ValueError("a Conductor key id needs its secret, and a secret its key id")
        if (self.header_name is None) != (self.header_value is None):
            raise ValueError("a static header needs both a name and a value")

    def __repr__(self) -> str:
        parts = []
        if self.key_id is not None:
            parts.append(f"key_id={self.key_id!r}, key_secret='***'")
        if self.header_name is not None:
            parts.append(f"header='{self.header_name}: ***'")
        return f"ConductorAuth({', '.join(parts)})"

    @property
    def uses_token(self) -> bool:
        return self.key_id is not None

    def static_headers(self) -> dict[str, str]:
        if self.header_name is None or self.header_value is None:
            return {}
        return {self.header_name: self.header_value}

    def describe(self) -> str:
        """What a message may say about these credentials: no secret."""
        said = []
        if self.key_id is not None:
            said.append(f"CONDUCTOR_AUTH_KEY={self.key_id!r} with its CONDUCTOR_AUTH_SECRET")
        if self.header_name is not None:
            said.append(f"CONDUCTOR_AUTH_HEADER ({self.header_name}: ***)")
        return " and ".join(said) or "no credentials"


class FromEnvironment(Enum):
    """The default of `auth` parameters: the credentials of this process's settings."""

    FROM_ENVIRONMENT = "the environment"


FROM_ENVIRONMENT = FromEnvironment.FROM_ENVIRONMENT
AuthChoice = ConductorAuth | None | FromEnvironment


def resolve(auth: AuthChoice) -> ConductorAuth | None:
    """`auth` itself, or (by default) the credentials the environment's settings give."""
    if auth is FROM_ENVIRONMENT:
        # Imported here: settings builds ConductorAuth, so it imports this module.
        from backtor.runtime.settings import conductor_auth_from_env

        return conductor_auth_from_env()
    return auth


class ConductorAuthRejected(ConductorRefused, SettingError):
    """Conductor (or its gateway) refused Backtor's credentials, or asked for some.

    A Conductor refusal (the API answers it as one, 502) and a setting Backtor cannot use
    (`backtor` commands stop with one line and status 2, as for any bad setting). The
    message names the variables to check, never a secret.
    """

    def __init__(self, operation: str, status: int, message: str, variable: str) -> None:
        BacktorError.__init__(self, message)
        self.operation = operation
        self.status = status
        self.variable = variable
        self.value = "***"


def rejection(
    auth: ConductorAuth | None, operation: str, status: int, where: str, said: str
) -> ConductorAuthRejected:
    """The error for a 401 that a fresh token (if any) did not cure."""
    if auth is None:
        return ConductorAuthRejected(
            operation,
            status,
            f"Conductor requires authentication: {where} answered HTTP {status} ({said}); "
            "set CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET, or CONDUCTOR_AUTH_HEADER",
            "CONDUCTOR_AUTH_KEY",
        )
    variable = "CONDUCTOR_AUTH_KEY" if auth.uses_token else "CONDUCTOR_AUTH_HEADER"
    return ConductorAuthRejected(
        operation,
        status,
        f"Conductor refused {auth.describe()}: {where} answered HTTP {status} ({said}); "
        "check these settings",
        variable,
    )


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch), or None for any other token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def secrets_of(auth: ConductorAuth | None) -> tuple[str | None, ...]:
    return () if auth is None else (auth.key_secret, auth.header_value)


def scrub(text: str, auth: ConductorAuth | None) -> str:
    """`text` with any of `auth`'s secrets masked (a server may echo what it was sent)."""
    for secret in secrets_of(auth):
        if secret:
            text = text.replace(secret, "***")
    return text


def _said(answer: requests.Response, *secrets: str | None) -> str:
    """The server's own words about a refusal, short, with any echo of a secret masked."""
    try:
        body = answer.json()
        text = str(body.get("message") or body.get("error") or answer.text)
    except (ValueError, AttributeError):
        text = answer.text
    text = " ".join(text.split())[:200] or answer.reason or "no message"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class TokenSource:
    """The key and secret exchanged at `{base_url}/token`; the token reused until due.

    Thread-safe: one exchange at a time, and a token that one thread saw refused is
    dropped once, however many threads report it.
    """

    def __init__(
        self,
        base_url: str,
        auth: ConductorAuth,
        session: requests.Session,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if auth.key_id is None or auth.key_secret is None:
            raise ValueError("a TokenSource needs a key id and a secret")
        self.url = base_url.rstrip("/") + "/token"
        self._auth = auth
        self._key_id = auth.key_id
        self._secret = auth.key_secret
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._due = 0.0

    def __repr__(self) -> str:
        return f"TokenSource({self.url!r}, key_id={self._key_id!r})"

    def token(self) -> str:
        """A token to send now: the current one, or a fresh one when it is due or missing."""
        with self._lock:
            if self._token is None or self._clock() >= self._due:
                self._token, self._due = self._exchange()
            return self._token

    def headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: self.token()}

    def refused(self, token: str) -> None:
        """`token` was answered 401: the next `token()` fetches a new one."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _exchange(self) -> tuple[str, float]:
        operation = "get_token"
        started = time.perf_counter()
        status = "error"
        try:
            try:
                answer = self._session.post(
                    self.url,
                    json={"keyId": self._key_id, "keySecret": self._secret},
                    timeout=self._timeout,
                    headers={TOKEN_HEADER: None},  # type: ignore[dict-item]  # not the old one
                )
            except requests.RequestException as exc:
                status = "unavailable"
                raise ConductorUnavailable(f"Conductor {operation}: {exc}") from None
            status = str(answer.status_code)
            return self._read(answer, operation)
        finally:
            telemetry.observe_conductor_call(operation, status, time.perf_counter() - started)

    def _read(self, answer: requests.Response, operation: str) -> tuple[str, float]:
        where = f"POST {self.url}"
        if answer.status_code in _UNAVAILABLE_STATUSES:
            raise ConductorUnavailable(
                f"Conductor {operation}: HTTP {answer.status_code} {_said(answer, self._secret)}"
            )
        if answer.status_code in (401, 403):
            raise ConductorAuthRejected(
                operation,
                answer.status_code,
                f"Conductor refused {self._auth.describe()}: {where} answered HTTP "
                f"{answer.status_code} ({_said(answer, *secrets_of(self._auth))}); "
                "check the key and the secret",
                "CONDUCTOR_AUTH_SECRET",
            )
        if answer.status_code == 404:
            raise ConductorAuthRejected(
                operation,
                404,
                f"Conductor has no token endpoint: {where} answered HTTP 404, so this server "
                "takes no key and secret; check CONDUCTOR_API_URL, or unset "
                "CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET",
                "CONDUCTOR_AUTH_KEY",
            )
        if not answer.ok:
            raise ConductorRefused(operation, answer.status_code, _said(answer, self._secret))
        try:
            body: Any = answer.json()
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            from backtor.conductor.payloads import ConductorBadAnswer

            raise ConductorBadAnswer(operation, "no token in the answer")
        now = self._clock()
        expiry = jwt_expiry(token)
        if expiry is None or expiry <= now:
            # No exp, or one already past by this clock (skew): renew on schedule, and at
            # once when Conductor answers 401.
            due = now + self._auth.refresh_minutes * 60
        else:
            due = expiry - min(REFRESH_MARGIN_SECONDS, (expiry - now) / 5)
        log.debug("Conductor token for key %s valid until %.0f", self._key_id, due)
        return token, due


def verify(
    base_url: str,
    auth: ConductorAuth | None,
    probe_path: str,
    *,
    timeout: float = 10.0,
) -> None:
    """Fail now, with one clear error, when Conductor will refuse these credentials.

    For processes whose calls all go through conductor-python (which only logs a refusal
    and backs off): exchanges the key and secret, then makes one read-only call (`GET
    probe_path`). Raises ConductorAuthRejected on a refusal (401); a server that cannot be
    reached or answers otherwise is only logged, as the workers retry on their own.
    """
    base = base_url.rstrip("/")
    with requests.Session() as session:
        session.headers["Accept"] = "application/json"
        if auth is not None:
            session.headers.update(auth.static_headers())
        try:
            token = {}
            if auth is not None and auth.uses_token:
                token = TokenSource(base, auth, session, timeout=timeout).headers()
            answer = session.get(base + probe_path, headers=token, timeout=timeout)
        except ConductorAuthRejected:
            raise
        except (BacktorError, requests.RequestException) as exc:
            log.warning("could not check the Conductor credentials yet (%s); retrying later", exc)
            return
    if answer.status_code == 401:
        said = _said(answer, *secrets_of(auth))
        raise rejection(auth, "check_credentials", 401, f"GET {base}{probe_path}", said)


def header_parts(text: str) -> tuple[str, str] | None:
    """`Name: value` as (name, value), or None when it is not one HTTP header."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not value or "\r" in text or "\n" in text:
        return None
    if not name or any(c not in _TOKEN_CHARS for c in name):
        return None
    return name, value


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
