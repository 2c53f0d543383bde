"""/ui over plain HTTP: the token (header, form, cookie), escaping, bounds and bad queries.

The browser tests show the pages rendered; these pin down each rule of the exchange,
status by status, with a client that shows every header.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import requests

from backtor.api.ui import access
from tests.ui.conftest import UiWorld
from tests.ui.seed import demo_body

ROOT = Path(__file__).resolve().parents[2]


def get(url: str, **kwargs: object) -> requests.Response:
    return requests.get(url, timeout=30, allow_redirects=False, **kwargs)  # type: ignore[arg-type]


def sign_in(world: UiWorld, token: str, target: str = "/ui") -> requests.Response:
    return requests.post(
        f"{world.secured_url}/ui/login",
        data={"token": token, "next": target},
        timeout=30,
        allow_redirects=False,
    )


def test_without_a_token_the_pages_are_open(ui_world: UiWorld) -> None:
    answer = get(f"{ui_world.open_url}/ui")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "script-src" not in answer.headers["content-security-policy"]  # no script at all
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["cache-control"] == "no-store"
    assert "Sign out" not in answer.text
    # The form has nothing to do: it sends the browser on.
    assert get(f"{ui_world.open_url}/ui/login").status_code == 303


def test_the_token_opens_the_pages_as_a_header_or_through_the_form(ui_world: UiWorld) -> None:
    base = ui_world.secured_url
    for path in ("/ui", "/ui/spec/demo", "/ui/spec/nope", "/ui/no-such-page", "/ui/"):
        refused = get(f"{base}{path}")
        assert refused.status_code == 401, path
        assert '<form class="login" method="post" action="/ui/login">' in refused.text
        assert "demo-" not in refused.text and "COMPLETED" not in refused.text
    for wrong in ("Bearer wrong", "Basic " + ui_world.token, ui_world.token):
        assert get(f"{base}/ui", headers={"Authorization": wrong}).status_code == 401
    bearer = {"Authorization": f"Bearer {ui_world.token}"}
    assert get(f"{base}/ui", headers=bearer).status_code == 200
    assert get(f"{base}/ui/spec/demo", headers=bearer).status_code == 200
    assert get(f"{base}/ui/spec/nope", headers=bearer).status_code == 404
    assert get(f"{base}/ui/no-such-page", headers=bearer).status_code == 404

    # The form: a wrong token is refused; the right one sets the cookie and goes on.
    refused = sign_in(ui_world, "wrong", "/ui/spec/demo")
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    accepted = sign_in(ui_world, ui_world.token, "/ui/spec/demo")
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/ui/spec/demo"
    cookie = accepted.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert re.search(r"(?i)samesite=strict", cookie)
    assert re.search(r"(?i)path=/ui(;|$)", cookie)
    assert "secure" not in attributes  # plain HTTP here; HTTPS adds it
    assert ui_world.token not in cookie
    value = accepted.cookies["backtor_ui"]
    assert get(f"{base}/ui", cookies={"backtor_ui": value}).status_code == 200
    # ... but the API takes headers only.
    assert get(f"{base}/backup", cookies={"backtor_ui": value}).status_code == 401


def test_a_cookie_not_made_with_the_token_or_expired_is_refused(ui_world: UiWorld) -> None:
    base = ui_world.secured_url
    now = ui_world.clock.now
    good = access.session_cookie(ui_world.token, now)
    assert get(f"{base}/ui", cookies={"backtor_ui": good}).status_code == 200
    expired = access.session_cookie(ui_world.token, now - timedelta(hours=13))
    other = access.session_cookie("another-token", now)
    expires, _, digest = good.partition(".")
    later = f"{int(expires) + 86400}.{digest}"  # a longer life, same signature
    for bad in (expired, other, later, digest, "", "x.y", "1" * 40 + "." + digest):
        assert get(f"{base}/ui", cookies={"backtor_ui": bad}).status_code == 401, bad


def test_the_form_sends_the_browser_nowhere_but_ui(ui_world: UiWorld) -> None:
    for target in ("//evil.example/", "https://evil.example/ui", "/backup", "/ui\\@evil", ""):
        answer = sign_in(ui_world, ui_world.token, target)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui", target
    too_long = requests.post(
        f"{ui_world.secured_url}/ui/login",
        data={"token": "x" * 10_000},
        timeout=30,
        allow_redirects=False,
    )
    assert too_long.status_code == 413


def test_user_text_is_escaped(ui_world: UiWorld) -> None:
    page = get(f"{ui_world.open_url}/ui/spec/www").text
    assert ui_world.seeded.hostile_error not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page
    # A paused spec's reason, on the overview and on its page: text and tooltip escaped.
    reason = ui_world.seeded.paused_reason
    escaped = (
        "storage move &lt;b&gt;INC-4711&lt;/b&gt; &amp; &quot;archive&quot; volume "
        "&lt;script&gt;alert(1)&lt;/script&gt;: resume after the new array is mounted"
    )
    for path in ("/ui", "/ui/spec/archive"):
        page = get(f"{ui_world.open_url}{path}").text
        assert reason not in page and "<script" not in page and "<b>" not in page, path
        assert f'<span class="paused-reason" title="{escaped}">' in page, path
        assert f"<q>{escaped}</q>" in page, path


def test_pages_are_bounded_and_their_queries_checked(ui_world: UiWorld) -> None:
    base = f"{ui_world.open_url}/ui/spec/events"
    big = get(f"{base}?removed=1&limit=1000")
    assert big.status_code == 200
    assert big.text.count('<a class="mark ') == 1000
    assert len(big.content) < 2_000_000
    default = get(f"{base}?removed=1")
    assert default.text.count('<a class="mark ') == 200
    for query in (
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=abc",
        "removed=2",
        "axis=sideways",
        "bogus=1",
        "limit=5&limit=6",
    ):
        answer = get(f"{base}?{query}")
        assert answer.status_code == 400, query
        assert answer.headers["content-type"].startswith("text/html")
    assert get(f"{ui_world.open_url}/ui?after=%3Cb%3E").status_code == 400
    # A cursor naming no backup of this spec: not found, as in the API.
    assert get(f"{base}?after=1").status_code == 404


def test_ui_is_not_in_the_openapi_document(ui_world: UiWorld) -> None:
    paths = requests.get(f"{ui_world.open_url}/openapi.json", timeout=30).json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]


def test_the_seed_posts_the_demo_spec_of_make_run() -> None:
    """tests/ui/seed.py stands for scripts/run's demo: the same schedule and retention."""
    script = (ROOT / "scripts" / "run").read_text(encoding="utf-8")
    body = demo_body()
    assert f'"name": "{body["name"]}"' in script
    assert f'"backupCronString": "{body["backupCronString"]}"' in script
    assert f'"retentionMinutely": "{body["retentionMinutely"]}"' in script
    assert '"kind": "filesystem", "source": d + "/source", "target": d + "/store"' in script
