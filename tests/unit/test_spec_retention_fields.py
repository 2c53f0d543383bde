"""normalise_spec: keep-within, keep-last, the keep-newest-only guard and notifyUrl."""

from __future__ import annotations

import pytest

from backtor.core.specs import RETENTION_FIELDS, SpecDraft, SpecError, normalise_spec

ALL_ZERO = dict.fromkeys(RETENTION_FIELDS, "0")


def test_keep_within_and_last_are_stored_canonical() -> None:
    values = normalise_spec(
        SpecDraft(
            name="a",
            retention={**ALL_ZERO, "retentionKeepWithin": " 1D12H ", "retentionLast": 3},
        )
    )
    assert values.keep_within == "1d12h" and values.keep_last == 3


@pytest.mark.parametrize(
    "extra", [{}, {"retentionLast": 1}, {"retentionKeepWithin": ""}, {"retentionKeepWithin": "0d"}]
)
def test_a_policy_keeping_only_the_newest_is_refused_naming_the_field(
    extra: dict[str, object],
) -> None:
    with pytest.raises(SpecError) as raised:
        normalise_spec(SpecDraft(name="a", retention={**ALL_ZERO, **extra}))
    assert raised.value.field == "allowKeepNewestOnly"
    assert "never keep anything but the newest backup" in raised.value.message


def test_the_guard_can_be_waived_and_is_stored() -> None:
    values = normalise_spec(SpecDraft(name="a", retention=ALL_ZERO, allow_keep_newest_only=True))
    assert values.allow_keep_newest_only


@pytest.mark.parametrize(
    "url", ["http://hooks.local/x", "https://a.example:8443/p?token=s", "HTTP://[::1]/", ""]
)
def test_good_notify_urls(url: str) -> None:
    values = normalise_spec(SpecDraft(name="a", notify_url=url))
    assert values.notify_url == (url or None)


@pytest.mark.parametrize(
    "url", ["ftp://x", "http://user:pw@h/", "http://h /x", "hooks.local", "http://", "http://h/é"]
)
def test_bad_notify_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(SpecError) as raised:
        normalise_spec(SpecDraft(name="a", notify_url=url))
    assert raised.value.field == "notifyUrl"
    assert url not in raised.value.message.replace("http:// or", "")
