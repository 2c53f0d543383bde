"""Schemathesis, all checks, against the API with Conductor unreachable: the document is the server.

Every operation of /openapi.json is fuzzed in-process (ASGI), in all of schemathesis' phases
(examples, coverage, fuzzing, stateful), with every built-in check: schema-valid requests
must be accepted, schema-invalid ones refused, every status, header and body declared, and
a 405 must carry an `Allow` header naming every method of the resource. Conductor listens
nowhere, so a backup started by hand is refused: a 502/503 is fine where it is declared for
Conductor being down (and says so); any 500 fails.

Deterministic: a fixed seed, derandomised generation, no example database, one worker.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from backtor.api.app import create_app
from backtor.core.cron import CronError, parse_cron
from backtor.db.migrate import upgrade_to_head
from backtor.runtime.settings import Settings
from tests.support.net import free_port

SEED = 20261201
MAX_EXAMPLES = 10
# Below this, the run tested too little to mean anything (it makes about 1,500).
MIN_REQUESTS = 800
# Operations that call Conductor, and so may answer 502/503 while it is down.
CONDUCTOR_OPERATIONS = frozenset({"POST /backup/{name}/materialized"})
# The rules no JSON schema can state, each in its field's description: a schema-valid
# request may be refused (422) for these, and for nothing else.
STATED_BEYOND_THE_SCHEMA = (
    "toDate must be later than fromDate",  # compares two fields
    "never fires",  # a cron with no date in 50 years ("February 30"): needs a calendar
    # Every tier 0, no keep-within, keep-last at most 1, without allowKeepNewestOnly: eight
    # fields at once (backtor.core.specs.parse_retention).
    "would never keep anything but the newest backup",
    # pausedReason with enabled 1 or without enabled (1 by default): two fields at once.
    "pausedReason goes with enabled 0",
)
# What schemathesis' positive_data_acceptance accepts for a schema-valid request.
# How often each rule answered a schema-valid request (printed: a rule that fires often is
# worth a second look at the schema).
EXCUSED: Counter[str] = Counter()
POSITIVE_EXPECTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
ACCEPTED = frozenset([*range(200, 400), 401, 403, 404, 409, 429, *range(500, 600)])


# -- the `cron` format: what backtor.core.cron accepts, drawn from its grammar ----------------


def _field(low: int, high: int, *extra: str) -> st.SearchStrategy[str]:
    number = st.integers(low, high).map(str)
    span = st.tuples(st.integers(low, high), st.integers(low, high)).map(
        lambda t: f"{min(t)}-{max(t)}"
    )
    step = st.tuples(st.sampled_from(["*", str(low)]), st.integers(1, high - low + 1)).map(
        lambda t: f"{t[0]}/{t[1]}"
    )
    listed = st.lists(st.integers(low, high), min_size=2, max_size=3, unique=True).map(
        lambda values: ",".join(map(str, sorted(values)))
    )
    return st.one_of(st.just("*"), number, span, step, listed, *map(st.just, extra))


def _accepted(text: str) -> bool:
    try:
        parse_cron(text)
    except CronError:
        return False
    return True


_SIX = st.tuples(
    _field(0, 59),
    _field(0, 59),
    _field(0, 23),
    _field(1, 31, "?", "L", "15W"),
    _field(1, 12, "JAN", "MAR-OCT"),
    _field(0, 6, "?", "MON-FRI", "SUN", "5#2", "5L"),
).map(" ".join)
CRON = st.one_of(_SIX, _SIX.map(lambda six: six.split(" ", 1)[1])).filter(_accepted)


# -- the checks Backtor adds to schemathesis' own -----------------------------------------------


@schemathesis.check
def server_errors_are_conductor_outages(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx only where Conductor is called, 502/503, saying Conductor; never a 500."""
    if response.status_code < 500:
        return None
    label = case.operation.label
    if response.status_code not in (502, 503) or label not in CONDUCTOR_OPERATIONS:
        raise AssertionError(f"{label} answered {response.status_code}: {response.text[:300]}")
    if "Conductor" not in json.loads(response.text)["message"]:
        raise AssertionError(f"{label}: a {response.status_code} not about Conductor")
    return None


@schemathesis.check
def schema_valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, with the 422s of STATED_BEYOND_THE_SCHEMA only.

    The built-in check runs with 422 added to its expected statuses; this one takes over
    the 422s: allowed when the message is one of those rules, a failure otherwise.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code in ACCEPTED:
        return None
    message = json.loads(response.text).get("message", "")
    rules = [rule for rule in STATED_BEYOND_THE_SCHEMA if rule in message]
    if response.status_code == 422 and rules:
        EXCUSED[rules[0]] += 1
        return None
    raise AssertionError(
        f"schema-valid request to {case.operation.label} refused with "
        f"{response.status_code}: {message}"
    )


class RequestCounter:
    """ASGI wrapper: every HTTP request that reached the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0
        self.statuses: Counter[int] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.statuses[int(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RequestCounter]:
    url = f"sqlite:///{tmp_path / 'backtor.db'}"
    upgrade_to_head(url)
    settings = Settings.from_env(
        {"DATABASE_URL": url, "CONDUCTOR_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    )
    yield RequestCounter(create_app(settings))


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "workers": 1,
            "continue-on-failure": True,
            "cache": {"enabled": False},
            # Timing on a shared machine says nothing about the schema.
            "suppress-health-check": ["too_slow"],
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            # 502/503 are judged by server_errors_are_conductor_outages, 500 by both; a 422
            # for schema-valid data by schema_valid_requests_are_accepted.
            "checks": {
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503"]},
                "positive_data_acceptance": {"expected-statuses": POSITIVE_EXPECTED},
            },
        }
    )


def test_the_openapi_document_is_what_the_server_does(
    api: RequestCounter, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    schemathesis.openapi.format("cron", CRON)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api, config=_config())
    started = time.monotonic()
    failures: list[str] = []
    problems: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    case = recorder.cases[case_id].value
                    failure = check.failure_info.failure
                    failures.append(
                        f"{check.name} on {case.operation.label}: {failure.title}: "
                        f"{failure.message}\n    {check.failure_info.code_sample}"
                    )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            problems.append(str(event))
        elif isinstance(event, events.EngineFinished):
            failures.extend(f"{f.title}: {f.message}" for f in event.failures)
    elapsed = time.monotonic() - started
    record_property("schemathesis_requests", api.count)
    with capsys.disabled():
        statuses = dict(sorted(api.statuses.items()))
        print(
            f"\nschemathesis: {api.count} requests in {elapsed:.1f} s, "
            f"{len(set(failures))} distinct failures; statuses {statuses}; schema-valid "
            f"requests refused by a rule stated beyond the schema: {dict(EXCUSED)}"
        )
    assert not problems, "\n".join(problems)
    assert not failures, "\n".join(sorted(set(failures)))
    assert api.count >= MIN_REQUESTS, f"only {api.count} requests"
    assert 500 not in api.statuses
