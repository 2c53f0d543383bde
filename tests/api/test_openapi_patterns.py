"""The schema's patterns and enums say exactly what the server accepts, in both regex dialects.

Property tests, no server: each pattern against the rule backtor.core applies (accepted
iff matched), and Python's `re.fullmatch` against the ECMA-style reading of a JSON Schema
validator (jsonschema_rs, as schemathesis and clients read /openapi.json).
"""

from __future__ import annotations

import re
import warnings

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backtor.api import patterns
from backtor.api.app import create_app
from backtor.conductor.http import ConductorClient
from backtor.core.cron import CronError, parse_cron
from backtor.core.errors import InvalidField
from backtor.core.policy import FIELD_BY_TIER, Tier, parse_keep_within, parse_rule
from backtor.core.specs import validate_name, validate_timezone
from backtor.db.models import BackupStatus
from backtor.runtime.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SETTINGS = settings(
    max_examples=400,
    database=None,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Characters the rules care about, plus whitespace of both dialects and a few others.
RULE_TEXT = st.text(
    alphabet=st.sampled_from(
        "0123456789@LlSsUuNnMmOoTtWwEeDdHhFfRrAaIi \t\n\x1c\x85\u2003\ufeff-x#"
    ),
    max_size=12,
)


def _ecma(pattern: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator({"type": "string", "pattern": pattern})


def _accepted_rule(tier: Tier, text: str) -> bool:
    try:
        parse_rule(tier, text)
    except InvalidField:
        return False
    return True


@pytest.mark.parametrize("tier", list(Tier))
@SETTINGS
@given(data=st.data())
def test_a_retention_rule_matches_its_pattern_iff_the_server_takes_it(
    tier: Tier, data: st.DataObject
) -> None:
    pattern = patterns.retention(tier)
    text = data.draw(st.one_of(st.from_regex(pattern, fullmatch=True), RULE_TEXT))
    if len(text) > patterns.MAX_RETENTION_CHARS:
        return
    matched = re.fullmatch(pattern, text) is not None
    assert matched == _ecma(pattern).is_valid(text), (FIELD_BY_TIER[tier], text)
    assert matched == _accepted_rule(tier, text), (FIELD_BY_TIER[tier], text)


@SETTINGS
@given(
    text=st.one_of(
        st.from_regex(patterns.KEEP_WITHIN, fullmatch=True),
        RULE_TEXT,
        st.from_regex(r"[0-9]{1,11}[wdhmsWDHMS]([0-9]{1,3}[wdhms])?", fullmatch=True),
    )
)
def test_a_keep_within_duration_matches_its_pattern_iff_the_server_takes_it(text: str) -> None:
    if len(text) > patterns.MAX_RETENTION_CHARS:
        return
    try:
        parse_keep_within(text)
        accepted = True
    except InvalidField:
        accepted = False
    assert _ecma(patterns.KEEP_WITHIN).is_valid(text) == accepted, text
    assert (re.fullmatch(patterns.KEEP_WITHIN, text) is not None) == accepted, text


@SETTINGS
@given(text=st.one_of(st.from_regex(patterns.NAME, fullmatch=True), st.text(max_size=140)))
@example(text="abc\n")  # Python's `$` would take it before a last newline; fullmatch does not
def test_a_name_matches_its_pattern_iff_the_server_takes_it(text: str) -> None:
    try:
        validate_name(text)
        accepted = True
    except InvalidField:
        accepted = False
    assert _ecma(patterns.NAME).is_valid(text) == accepted, text
    assert (re.fullmatch(patterns.NAME, text) is not None) == accepted, text


@SETTINGS
@given(text=st.from_regex(patterns.CRON, fullmatch=True))
def test_every_cron_the_pattern_admits_is_one_croniter_takes(text: str) -> None:
    """The one rule beyond the pattern is firing at all (documented: 'February 30')."""
    assert _ecma(patterns.CRON).is_valid(text), text
    if not text.strip():
        return  # blank: derived from the retention policy
    try:
        parse_cron(text)
    except CronError as error:
        assert "never fires" in str(error), text


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 */4 ? * *",
        "*/5 * * * *",
        "0 0 12 * * MON-FRI",
        "0 30 2 L * ?",
        "0 0 9 15W * ?",
        "0 0 9 ? * 5#3",
        "0 0 9 ? * L5,MON#1",
        "0 0 0 1,15 JAN-MAR,oct *",
        "59 59 23 * * *",
    ],
)
def test_common_crons_are_in_the_syntax(cron: str) -> None:
    assert re.fullmatch(patterns.CRON, cron), cron
    parse_cron(cron)


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 0 1 * 1",  # both day fields: croniter ORs or ANDs them by case
        "0 0 0 * * 1,MON#2",  # croniter refuses literal and nth weekdays in one list
        "H * * * *",
        "0 0 0 ? * ? 2024",
    ],
)
def test_crons_outside_the_syntax_are_refused(cron: str) -> None:
    assert not re.fullmatch(patterns.CRON, cron)


def test_every_zone_of_the_enum_is_taken() -> None:
    zones = patterns.timezone_names()
    assert "UTC" in zones and "Europe/Berlin" in zones
    for zone in zones:
        validate_timezone(zone)


def test_status_and_tag_patterns_take_any_ascii_case_only() -> None:
    status = patterns.one_of_any_case(s.value for s in BackupStatus)
    tag = patterns.one_of_any_case(t.value for t in Tier)
    for text, pattern in (("completed", status), ("Remove_Failed", status), ("WEEKLY", tag)):
        assert re.fullmatch(pattern, text) and _ecma(pattern).is_valid(text)
    for text, pattern in (("runn\u0131ng", status), ("wee\u212aly", tag), ("daily\n", tag)):
        assert not re.fullmatch(pattern, text) and not _ecma(pattern).is_valid(text)


def test_every_405_names_every_method_of_the_resource(
    dead_conductor: ConductorClient, sqlite_url: str
) -> None:
    app = create_app(Settings.from_env({"DATABASE_URL": sqlite_url}), conductor=dead_conductor)
    expected = {
        "/backup": "GET, POST, PUT",
        "/backup/db1": "GET, PUT, DELETE",
        "/backup/db1/materialized": "GET, POST",
        "/backup/db1/materialized/7/pin": "PUT, DELETE",
        "/backup/db1/retention/preview": "POST",
    }
    with TestClient(app) as client:
        for path, allow in expected.items():
            for method in ("OPTIONS", "PATCH", "HEAD"):
                answer = client.request(method, path)
                assert answer.status_code == 405, (method, path)
                assert answer.headers["Allow"] == allow, (method, path)
                if method != "HEAD":  # a HEAD answer has no body
                    assert answer.json()["message"].endswith(f"allowed: {allow}")
