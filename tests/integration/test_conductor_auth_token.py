"""The key/secret exchange, token refresh and static header, against a tiny stub on loopback.

Fast (no Conductor, no database): the stub issues tokens at /api/token for one key and
secret, and answers any other call only with a valid X-Authorization (and, when asked, a
gateway header), as an Orkes server or a gateway would. Backtor's REST client and
conductor-python's ApiClient (what the workers use) are both held to it.
"""

from __future__ import annotations

import base64
import json
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from backtor.conductor import sdk
from backtor.conductor.auth import ConductorAuth, ConductorAuthRejected, TokenSource, jwt_expiry
from backtor.conductor.http import ConductorClient
from backtor.core.errors import ConductorRefused, SettingError
from backtor.runtime.settings import Settings, conductor_auth_from_env

KEY = "key-1"
SECRET = "s3cret-value-1"
GATEWAY = ("X-Gateway-Key", "gw-secret-2")


def jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'sub': KEY, 'exp': int(exp)})}.{uuid.uuid4().hex}"


@dataclass
class Stub:
    url: str = ""
    jwt_seconds: float | None = 300.0  # None: opaque tokens
    token_status: int | None = None  # answer every token request with this status
    gateway: bool = False  # require the gateway header on every request
    refuse_all: bool = False  # 401 even with a valid token
    tokens: dict[str, float] = field(default_factory=dict)
    exchanges: int = 0
    refusals: list[str] = field(default_factory=list)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()


class Handler(BaseHTTPRequestHandler):
    stub: Stub

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self) -> None:
        stub = self.stub
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        stub.calls.append((self.command, self.path, dict(self.headers.items())))
        if stub.gateway and self.headers.get(GATEWAY[0]) != GATEWAY[1]:
            stub.refusals.append("gateway")
            return self.reply(401, {"message": "gateway says no"})
        if self.path == "/api/token" and self.command == "POST":
            return self.token(json.loads(body or b"{}"))
        token = self.headers.get("X-Authorization", "")
        with stub.lock:
            expiry = stub.tokens.get(token)
        if stub.refuse_all or expiry is None:
            stub.refusals.append("INVALID_TOKEN")
            return self.reply(401, {"error": "INVALID_TOKEN", "message": "invalid token"})
        if time.time() >= expiry:
            stub.refusals.append("EXPIRED_TOKEN")
            return self.reply(401, {"error": "EXPIRED_TOKEN", "message": "expired token"})
        if self.path.startswith("/api/metadata/taskdefs/"):
            return self.reply(200, {"name": self.path.rsplit("/", 1)[1]})
        if self.path.startswith("/api/tasks/poll/batch/"):
            return self.reply(200, [])
        if self.path == "/health":
            return self.reply(200, {"healthy": True})
        return self.reply(404, {"message": "no such thing"})

    def token(self, body: dict[str, Any]) -> None:
        stub = self.stub
        if stub.token_status is not None:
            return self.reply(stub.token_status, {"message": "not here"})
        if body != {"keyId": KEY, "keySecret": SECRET}:
            stub.refusals.append("credentials")
            return self.reply(401, {"error": "INVALID_CREDENTIALS", "message": "bad key/secret"})
        if stub.jwt_seconds is None:
            token, expiry = uuid.uuid4().hex, time.time() + 3600
        else:
            expiry = time.time() + stub.jwt_seconds
            token = jwt(expiry)
        with stub.lock:
            stub.tokens[token] = expiry
            stub.exchanges += 1
        self.reply(200, {"token": token})

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()
    handler = type("StubHandler", (Handler,), {"stub": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def key_auth(secret: str = SECRET, **options: Any) -> ConductorAuth:
    return ConductorAuth(key_id=KEY, key_secret=secret, **options)


# -- Backtor's REST client -------------------------------------------------------------------


def test_one_exchange_serves_many_calls(stub: Stub) -> None:
    client = ConductorClient(stub.url, auth=key_auth())
    for _ in range(3):
        assert client.get_task_def("backup") == {"name": "backup"}
    assert client.is_healthy()
    assert stub.exchanges == 1
    assert stub.refusals == []
    sent = [headers.get("X-Authorization") for _, path, headers in stub.calls]
    assert sent[0] is None  # the exchange itself
    assert len(set(sent[1:])) == 1 and sent[1] in stub.tokens


def test_a_jwt_is_fetched_anew_before_its_exp(stub: Stub) -> None:
    import requests

    now = [time.time()]
    source = TokenSource(stub.url, key_auth(), requests.Session(), timeout=5, clock=lambda: now[0])
    first = source.token()
    expiry = jwt_expiry(first)
    assert expiry is not None and abs(expiry - (now[0] + 300)) < 2
    now[0] = expiry - 61  # a minute and more before exp: still the same token
    assert source.token() == first
    now[0] = expiry - 59  # within the last minute: a new one, before the old one lapses
    assert source.token() != first
    assert stub.exchanges == 2


def test_a_short_jwt_is_renewed_within_its_last_fifth(stub: Stub) -> None:
    import requests

    stub.jwt_seconds = 50  # margin min(60 s, 50 s / 5) = 10 s
    now = [time.time()]
    source = TokenSource(stub.url, key_auth(), requests.Session(), timeout=5, clock=lambda: now[0])
    first = source.token()
    expiry = jwt_expiry(first)
    assert expiry is not None
    now[0] = expiry - 11
    assert source.token() == first
    now[0] = expiry - 9
    assert source.token() != first


def test_a_token_without_exp_is_renewed_every_refresh_minutes(stub: Stub) -> None:
    import requests

    stub.jwt_seconds = None
    now = [1000.0]
    source = TokenSource(
        stub.url, key_auth(refresh_minutes=2), requests.Session(), timeout=5, clock=lambda: now[0]
    )
    first = source.token()
    now[0] += 119
    assert source.token() == first
    now[0] += 2
    assert source.token() != first
    assert stub.exchanges == 2


def test_an_exp_already_past_by_our_clock_does_not_make_every_call_fetch(stub: Stub) -> None:
    import requests

    stub.jwt_seconds = -30  # the server's clock runs behind ours
    source = TokenSource(stub.url, key_auth(refresh_minutes=1), requests.Session(), timeout=5)
    assert source.token() == source.token()
    assert stub.exchanges == 1


def test_a_401_gets_one_fresh_token_and_one_retry(stub: Stub) -> None:
    client = ConductorClient(stub.url, auth=key_auth())
    assert client.get_task_def("backup") is not None
    stub.revoke_all()  # e.g. the server restarted with a new signing key
    assert client.get_task_def("backup") is not None
    assert stub.exchanges == 2
    assert stub.refusals == ["INVALID_TOKEN"]


def test_a_401_that_a_fresh_token_does_not_cure_is_one_clear_error(stub: Stub) -> None:
    client = ConductorClient(stub.url, auth=key_auth())
    stub.refuse_all = True
    with pytest.raises(ConductorAuthRejected) as caught:
        client.get_task_def("backup")
    message = str(caught.value)
    assert "Conductor refused CONDUCTOR_AUTH_KEY='key-1'" in message
    assert "HTTP 401" in message and SECRET not in message
    assert stub.exchanges == 2 and len(stub.refusals) == 2  # one retry, no loop


def test_a_wrong_secret_is_one_clear_error_and_a_bad_setting(stub: Stub) -> None:
    wrong = "wrong-secret-3"
    client = ConductorClient(stub.url, auth=key_auth(secret=wrong))
    with pytest.raises(ConductorAuthRejected) as caught:
        client.get_task_def("backup")
    error = caught.value
    # A Conductor refusal to the API (502), a bad setting to the `backtor` commands (exit 2).
    assert isinstance(error, ConductorRefused) and isinstance(error, SettingError)
    assert error.variable == "CONDUCTOR_AUTH_SECRET" and error.status == 401
    message = str(error)
    assert message.startswith("Conductor refused CONDUCTOR_AUTH_KEY='key-1' with its ")
    assert f"POST {stub.url}/token answered HTTP 401 (bad key/secret)" in message
    assert wrong not in message and wrong not in repr(error) and wrong not in repr(client)
    assert [path for _, path, _ in stub.calls] == ["/api/token"]  # nothing sent without one


def test_a_server_without_a_token_endpoint_is_named(stub: Stub) -> None:
    stub.token_status = 404
    with pytest.raises(ConductorAuthRejected, match="Conductor has no token endpoint"):
        ConductorClient(stub.url, auth=key_auth()).get_task_def("backup")


def test_no_credentials_against_a_secured_server_says_what_to_set(stub: Stub) -> None:
    with pytest.raises(ConductorAuthRejected) as caught:
        ConductorClient(stub.url, auth=None).get_task_def("backup")
    assert "Conductor requires authentication" in str(caught.value)
    assert "set CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET, or CONDUCTOR_AUTH_HEADER" in str(
        caught.value
    )


def test_a_static_header_goes_with_every_call_the_exchange_included(stub: Stub) -> None:
    stub.gateway = True
    auth = key_auth(header_name=GATEWAY[0], header_value=GATEWAY[1])
    client = ConductorClient(stub.url, auth=auth)
    assert client.get_task_def("backup") is not None
    assert stub.refusals == []
    assert all(headers.get(GATEWAY[0]) == GATEWAY[1] for _, _, headers in stub.calls)
    assert GATEWAY[1] not in repr(client) and SECRET not in repr(client)
    # The header alone, wrong: refused, named, not shown.
    bad = ConductorAuth(header_name=GATEWAY[0], header_value="nope-4")
    with pytest.raises(ConductorAuthRejected) as caught:
        ConductorClient(stub.url, auth=bad).get_task_def("backup")
    assert "CONDUCTOR_AUTH_HEADER (X-Gateway-Key: ***)" in str(caught.value)
    assert "nope-4" not in str(caught.value)


def test_the_environment_is_every_clients_default(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONDUCTOR_AUTH_KEY", KEY)
    monkeypatch.setenv("CONDUCTOR_AUTH_SECRET", SECRET)
    assert ConductorClient(stub.url).get_task_def("backup") is not None
    assert stub.exchanges == 1


# -- settings and secrets -----------------------------------------------------------------------


def test_the_settings_combine_into_one_conductor_auth() -> None:
    env = {
        "CONDUCTOR_AUTH_KEY": KEY,
        "CONDUCTOR_AUTH_SECRET": SECRET,
        "CONDUCTOR_AUTH_HEADER": f"{GATEWAY[0]}:  {GATEWAY[1]} ",
        "CONDUCTOR_AUTH_REFRESH_MINUTES": "10",
    }
    settings = Settings.from_env(env)
    auth = settings.conductor_auth
    assert auth == key_auth(header_name=GATEWAY[0], header_value=GATEWAY[1], refresh_minutes=10)
    assert conductor_auth_from_env(env) == auth
    assert Settings.from_env({}).conductor_auth is None
    for text in (repr(settings), repr(auth), str(auth)):
        assert SECRET not in text and GATEWAY[1] not in text


@pytest.mark.parametrize(
    ("env", "variable", "shown"),
    [
        ({"CONDUCTOR_AUTH_KEY": KEY}, "CONDUCTOR_AUTH_SECRET", ""),
        ({"CONDUCTOR_AUTH_SECRET": SECRET}, "CONDUCTOR_AUTH_KEY", ""),
        ({"CONDUCTOR_AUTH_HEADER": "Bearer abc-secret"}, "CONDUCTOR_AUTH_HEADER", "***"),
        ({"CONDUCTOR_AUTH_HEADER": "X-Key: "}, "CONDUCTOR_AUTH_HEADER", "X-Key: "),
        (
            {"CONDUCTOR_AUTH_HEADER": "Bad Name: abc-secret"},
            "CONDUCTOR_AUTH_HEADER",
            "Bad Name: ***",
        ),
        (
            {
                "CONDUCTOR_AUTH_KEY": KEY,
                "CONDUCTOR_AUTH_SECRET": SECRET,
                "CONDUCTOR_AUTH_HEADER": "X-Authorization: abc-secret",
            },
            "CONDUCTOR_AUTH_HEADER",
            "X-Authorization: ***",
        ),
        ({"CONDUCTOR_AUTH_REFRESH_MINUTES": "0"}, "CONDUCTOR_AUTH_REFRESH_MINUTES", "0"),
        ({"CONDUCTOR_AUTH_REFRESH_MINUTES": "soon"}, "CONDUCTOR_AUTH_REFRESH_MINUTES", "soon"),
    ],
)
def test_bad_auth_settings_stop_at_start_without_their_secret(
    env: dict[str, str], variable: str, shown: str
) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert caught.value.value == shown
    assert "abc-secret" not in str(caught.value) and SECRET not in str(caught.value)


# -- conductor-python, what the workers use ------------------------------------------------------


def test_the_workers_configuration_has_the_same_credentials(stub: Stub) -> None:
    from conductor.client.http.api.task_resource_api import TaskResourceApi
    from conductor.client.http.api_client import ApiClient

    stub.gateway = True
    auth = key_auth(header_name=GATEWAY[0], header_value=GATEWAY[1], refresh_minutes=5)
    config = sdk.configuration(stub.url, auth)
    assert config.authentication_settings.key_id == KEY
    assert config.authentication_settings.key_secret == SECRET
    assert config.auth_token_ttl_msec == 5 * 60 * 1000
    assert SECRET not in repr(config) and GATEWAY[1] not in repr(config)
    # What a spawned runner gets: the pickled configuration, headers included.
    config = pickle.loads(pickle.dumps(config))  # noqa: S301  (our own bytes)
    api = ApiClient(configuration=config)  # exchanges the key and secret at once
    assert stub.exchanges == 1
    assert TaskResourceApi(api).batch_poll("backup", count=1, timeout=10) == []
    assert stub.refusals == []
    assert all(headers.get(GATEWAY[0]) == GATEWAY[1] for _, _, headers in stub.calls)
    # conductor-python renews on a 401 whose body says EXPIRED_TOKEN or INVALID_TOKEN.
    stub.revoke_all()
    assert TaskResourceApi(api).batch_poll("backup", count=1, timeout=10) == []
    assert stub.exchanges == 2
    assert stub.refusals == ["INVALID_TOKEN"]


def test_no_credentials_means_none_for_the_workers_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # conductor-python would read these by itself; Backtor's settings decide instead.
    monkeypatch.setenv("CONDUCTOR_AUTH_KEY", "elsewhere")
    monkeypatch.setenv("CONDUCTOR_AUTH_SECRET", "elsewhere")
    assert sdk.configuration("http://127.0.0.1:9/api", None).authentication_settings is None


def test_a_worker_with_a_wrong_secret_stops_before_it_polls(stub: Stub) -> None:
    worker = sdk.StoppableWorker(
        "backup", lambda task: None, stopping=bool, on_spawn=lambda: None, poll_interval=100
    )
    with pytest.raises(ConductorAuthRejected, match="CONDUCTOR_AUTH_KEY='key-1'"):
        sdk.task_handler(stub.url, [worker], auth=key_auth(secret="wrong-5"))
    assert [path for _, path, _ in stub.calls] == ["/api/token"]
