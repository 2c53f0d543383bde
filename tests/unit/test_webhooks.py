"""One POST to a notification receiver (a local http.server): 2xx delivers, anything else
fails with a reason that never repeats the URL's query string or password."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from backtor.conductor.webhooks import post, redact
from backtor.core.errors import SettingError
from backtor.core.notices import KEY_HEADER, Notice, NoticeKind, body_of, headers_for
from backtor.runtime.settings import Settings
from tests.support.receiver import Receiver, closed_url

TOKEN = "t0ken-in-query"
NOTICE = Notice(NoticeKind.BACKUP_FAILED, "nightly", datetime(2030, 1, 1, tzinfo=UTC), "k-1")


def test_a_2xx_answer_delivers_the_body_and_headers_as_sent() -> None:
    body = body_of(NOTICE)
    headers = headers_for(NOTICE, body, "s3cret", 1_900_000_000)
    with Receiver(status=202).running() as receiver:
        posted = post(receiver.url(query=f"token={TOKEN}"), body, headers)
    assert posted.delivered and posted.status == 202 and posted.error is None
    (got,) = receiver.all()
    assert (got.path, got.query, got.body) == ("/hook", f"token={TOKEN}", body)
    assert got.headers[KEY_HEADER] == "k-1" and got.verified("s3cret")


@pytest.mark.parametrize("status", [301, 400, 404, 500, 503])
def test_anything_else_fails_naming_the_receiver_without_its_query(status: int) -> None:
    with Receiver(status=status).running() as receiver:
        posted = post(receiver.url(query=f"token={TOKEN}"), b"{}", {})
    assert not posted.delivered and posted.status == status
    assert posted.error == f"{receiver.base}/hook answered HTTP {status}"
    assert len(receiver.all()) == 1  # a redirect is not followed


def test_a_receiver_that_is_down_fails_at_once() -> None:
    url = closed_url(query=f"token={TOKEN}")
    posted = post(url, b"{}", {})
    assert not posted.delivered and posted.status is None
    assert posted.error is not None and "could not be reached" in posted.error
    assert TOKEN not in posted.error


def test_a_receiver_that_does_not_answer_in_time_fails() -> None:
    receiver = Receiver()
    receiver.hold = threading.Event()
    with receiver.running():
        try:
            posted = post(receiver.url(query=f"token={TOKEN}"), b"{}", {}, timeout=0.3)
        finally:
            receiver.hold.set()
    assert posted.status is None and posted.error is not None
    assert "did not answer within 0.3 s" in posted.error and TOKEN not in posted.error


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/a/b?token=x#frag", "https://hooks.example/a/b"),
        ("https://user:pw@hooks.example:8443/a?t=1", "https://hooks.example:8443/a"),
        ("http://[::1]:9000/hook?t=1", "http://[::1]:9000/hook"),
        ("http://h:notaport/x", "<an unparsable URL>"),
    ],
)
def test_redact_keeps_scheme_host_port_and_path_only(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_the_settings_hide_the_url_and_secret() -> None:
    settings = Settings.from_env(
        {
            "BACKTOR_NOTIFY_URL": f"https://hooks.example/b?token={TOKEN}",
            "BACKTOR_NOTIFY_SECRET": "s3cret",
        }
    )
    assert settings.notify_url == f"https://hooks.example/b?token={TOKEN}"
    assert settings.notify_secret == "s3cret"
    assert TOKEN not in repr(settings) and "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    "bad", [f"hooks.example/b?token={TOKEN}", f"ftp://u:{TOKEN}@hooks.example/b", "https://"]
)
def test_a_bad_notify_url_is_reported_without_its_token(bad: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"BACKTOR_NOTIFY_URL": bad})
    assert caught.value.variable == "BACKTOR_NOTIFY_URL"
    assert TOKEN not in str(caught.value)
