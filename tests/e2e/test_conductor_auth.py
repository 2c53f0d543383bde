"""Backtor against a secured Conductor: an authenticating proxy in front of the real server.

The proxy (a local HTTP server, tests.support.http_server) plays Orkes' part: it issues short-lived
JWTs at /api/token for one key and secret, and refuses every other call without a valid
X-Authorization with 401 (`{"error": "INVALID_TOKEN" | "EXPIRED_TOKEN"}`); what it lets
through goes on to the real server unchanged. `backtor api`, `backtor worker` and `backtor
storage-worker` are started with CONDUCTOR_API_URL pointing at the proxy and one key and
secret, and take a full backup and removal cycle through it. With a wrong secret, each
command stops at start with one line that names the cause.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from backtor.db.migrate import upgrade_to_head
from tests.e2e.conftest import WRITABLE
from tests.support import processes
from tests.support.conductor import stop_open_runs, workflows
from tests.support.http_server import LocalHttpServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

KEY = "backtor-e2e-key"
SECRET = "e2e-s3cret-" + uuid.uuid4().hex[:8]
TOKEN_SECONDS = 8  # short: every process renews its token several times during the cycle


class AuthProxy(LocalHttpServer):
    """Tokens at /api/token; everything else only with a valid one, forwarded upstream."""

    def __init__(self, upstream_api: str, *, token_seconds: float = TOKEN_SECONDS) -> None:
        self.upstream = upstream_api.rstrip("/").removesuffix("/api")
        self.token_seconds = token_seconds
        self.tokens: dict[str, float] = {}
        self.exchanges: Counter[str] = Counter()  # granted, by User-Agent
        self.refusals: Counter[tuple[str, str]] = Counter()  # (reason, User-Agent)
        self.forwarded = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = handle_any

        super().__init__(Handler)
        self.url = f"{self.base}/api"

    # -- what the proxy does with one request ----------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        agent = (request.headers.get("User-Agent") or "?").split("/")[0]
        if request.path.split("?")[0] == "/api/token" and request.command == "POST":
            return self.token(request, body, agent)
        token = request.headers.get("X-Authorization")
        with self._lock:
            expiry = self.tokens.get(token or "")
        if expiry is None or time.time() >= expiry:
            reason = (
                "MISSING" if not token else "INVALID_TOKEN" if expiry is None else "EXPIRED_TOKEN"
            )
            with self._lock:
                self.refusals[(reason, agent)] += 1
            return reply(request, 401, {"error": reason, "message": f"{reason.lower()}"})
        forwarded = {
            k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")
        }
        try:
            answer = self._session().request(
                request.command,
                self.upstream + request.path,
                data=body or None,
                headers=forwarded,
                timeout=60,
            )
        except requests.RequestException as exc:
            return reply(request, 502, {"message": f"upstream: {exc}"})
        with self._lock:
            self.forwarded += 1
        content_type = answer.headers.get("Content-Type", "application/json")
        send(request, answer.status_code, answer.content, content_type)

    def token(self, request: BaseHTTPRequestHandler, body: bytes, agent: str) -> None:
        try:
            asked = json.loads(body or b"{}")
        except ValueError:
            asked = {}
        if asked != {"keyId": KEY, "keySecret": SECRET}:
            with self._lock:
                self.refusals[("CREDENTIALS", agent)] += 1
            return reply(request, 401, {"error": "INVALID_CREDENTIALS", "message": "bad key"})
        expiry = time.time() + self.token_seconds
        token = jwt(expiry)
        with self._lock:
            self.tokens[token] = expiry
            self.exchanges[agent] += 1
        reply(request, 200, {"token": token})

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session


def jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"sub": KEY, "exp": int(exp), "iat": int(time.time())}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex}"


def reply(request: BaseHTTPRequestHandler, status: int, body: object) -> None:
    send(request, status, json.dumps(body).encode(), "application/json")


def send(request: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


@pytest.fixture
def proxy(conductor_url: str) -> Iterator[AuthProxy]:
    with AuthProxy(conductor_url).running() as running:
        yield running


def secured_env(database_url: str, proxy: AuthProxy, secret: str = SECRET) -> dict[str, str]:
    return processes.backtor_env(
        database_url,
        proxy.url,
        BACKTOR_REMOVAL_RETRY_SECONDS="1",
        BACKTOR_WORKER_HEALTH_PORT="0",
        CONDUCTOR_AUTH_KEY=KEY,
        CONDUCTOR_AUTH_SECRET=secret,
    )


def test_a_backup_and_removal_cycle_through_an_authenticating_proxy(
    proxy: AuthProxy, conductor_url: str, postgres_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(postgres_url)
    env = secured_env(postgres_url, proxy)
    logs = tmp_path / "logs"
    logs.mkdir()
    root = tmp_path / "root"
    source, store = root / "source", root / "store"
    source.mkdir(parents=True)
    (source / "data.txt").write_text("backed up through an authenticating proxy\n" * 100)
    name = f"auth{uuid.uuid4().hex[:8]}-files"
    storage = processes.start(
        ["storage-worker", "filesystem", "--allow-root", str(root)], env, logs / "storage.log"
    )

    def log_text() -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))

    cycle_started = time.monotonic()
    try:
        with (
            processes.api_server(env, logs / "api.log") as api,
            processes.workers(env, logs),
        ):
            wait_until(
                lambda: (
                    requests.get(
                        f"{conductor_url}/metadata/workflow/remove_backup", timeout=10
                    ).status_code
                    == 200
                ),
                timeout=60,
                what="backtor worker to register the definitions through the proxy",
            )
            config = {"kind": "filesystem", "source": str(source), "target": str(store)}
            created = requests.post(
                f"{api}/backup",
                json={
                    "name": name,
                    "workerConfig": json.dumps(config),
                    "backupCronString": "*/2 * * * * *",
                    "retentionMinutely": "2",
                },
                timeout=10,
            )
            assert created.status_code == 201, created.text

            def removed_some() -> bool:
                done = workflows(conductor_url, "remove_backup", name)
                return len([w for w in done if w["status"] == "COMPLETED"]) >= 2

            wait_until(removed_some, timeout=120, what="two completed removals")
            # Long enough for every process to outlive its first tokens, while backups run.
            time.sleep(max(0.0, cycle_started + 3 * TOKEN_SECONDS - time.monotonic()))
            spec = requests.get(f"{api}/backup/{name}", timeout=10).json()
            body = {k: v for k, v in spec.items() if k in WRITABLE} | {"enabled": 0}
            assert requests.put(f"{api}/backup/{name}", json=body, timeout=10).status_code == 200

            def settled() -> bool:
                runs = workflows(conductor_url, "create_backup", name) + workflows(
                    conductor_url, "remove_backup", name
                )
                listed = requests.get(f"{api}/backup/{name}/materialized", timeout=10).json()
                busy = [b for b in listed if b["status"] in ("RUNNING", "REMOVING")]
                return not busy and all(w["status"] != "RUNNING" for w in runs)

            wait_until(settled, timeout=60, what="the spec to settle")
            backups = requests.get(f"{api}/backup/{name}/materialized", timeout=10).json()
    finally:
        processes.stop(storage)
        for kind in ("create_backup", "remove_backup"):
            stop_open_runs(conductor_url, kind, name)

    kept = {b["dataId"] for b in backups if b["status"] == "COMPLETED"}
    removed = {b["dataId"] for b in backups if b["status"] == "REMOVED"}
    assert kept and len(removed) >= 2, log_text()[-5000:]
    assert {b["status"] for b in backups} <= {"COMPLETED", "REMOVED"}, backups
    assert {p.name for p in store.iterdir()} == kept

    # Every process took tokens with the one key and secret: Backtor's REST client (API,
    # worker: requests) and conductor-python's runners (worker, storage worker: httpx).
    print(f"\nproxy: {proxy.forwarded} calls forwarded; tokens granted {dict(proxy.exchanges)}")
    print(f"proxy: refusals {dict(proxy.refusals)}")
    assert proxy.forwarded > 50
    assert proxy.exchanges["python-requests"] >= 2, proxy.exchanges
    assert proxy.exchanges["python-httpx"] >= 2, proxy.exchanges
    # Nothing reached Conductor, nor was sent, without a token; the credentials were right.
    assert not [r for r in proxy.refusals if r[0] in ("MISSING", "CREDENTIALS")], proxy.refusals
    # Tokens lapsed several times over during the cycle. Backtor's own client renews before
    # exp, so it never sends an expired one; conductor-python renews when told
    # EXPIRED_TOKEN, and its runners went on taking tasks after that.
    assert proxy.refusals[("EXPIRED_TOKEN", "python-requests")] == 0, proxy.refusals
    assert proxy.refusals[("EXPIRED_TOKEN", "python-httpx")] >= 1, proxy.refusals
    # Neither the secret nor any token reaches a log.
    text = log_text()
    assert SECRET not in text
    assert not [t for t in proxy.tokens if t in text]


def run_command(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [processes.BACKTOR, *args], env=env, capture_output=True, text=True, timeout=90
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_wrong_secret_stops_every_command_at_start_with_one_clear_error(
    proxy: AuthProxy, tmp_path: Path
) -> None:
    wrong = "wrong-" + uuid.uuid4().hex[:8]
    env = secured_env(f"sqlite:///{tmp_path / 'backtor.db'}", proxy, secret=wrong)
    commands = {
        "register": ["register"],
        "worker": ["worker"],
        "storage-worker": ["storage-worker", "filesystem", "--allow-root", str(tmp_path)],
    }
    for label, args in commands.items():
        status, output, seconds = run_command(args, env)
        print(f"\n$ backtor {' '.join(args)}  -> exit {status} in {seconds:.1f} s\n{output}")
        assert status != 0, output
        assert seconds < 30, output  # at start, not after a stall
        assert "Traceback" not in output, output
        named = [line for line in output.splitlines() if "Conductor refused" in line]
        assert len(named) == 1, output
        assert named[0].startswith(f"backtor {label}: Conductor refused CONDUCTOR_AUTH_KEY="), named
        assert f"'{KEY}' with its CONDUCTOR_AUTH_SECRET" in named[0]
        assert f"POST {proxy.url}/token answered HTTP 401" in named[0]
        assert wrong not in output
    # Nothing got through: every attempt was one token request, refused.
    assert proxy.forwarded == 0
    assert sum(proxy.refusals.values()) == proxy.refusals[("CREDENTIALS", "python-requests")]

    # No credentials at all against the secured server: the error says what to set.
    env.pop("CONDUCTOR_AUTH_KEY")
    env.pop("CONDUCTOR_AUTH_SECRET")
    status, output, _ = run_command(["register"], env)
    print(f"\n$ backtor register (no credentials) -> exit {status}\n{output}")
    assert status != 0
    assert "Conductor requires authentication" in output
    assert "set CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET, or CONDUCTOR_AUTH_HEADER" in output
