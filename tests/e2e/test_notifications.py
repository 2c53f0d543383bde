"""Failure notifications end to end: real Conductor, PostgreSQL, worker and API processes,
and a receiver in the test (http.server in a thread) that verifies every signature.

One stack carries every kind a receiver is told about: backups that fail and then succeed
(failure, recovery), a spec with no success for too long (overdue, recovery), and a spec
whose storage target is broken that pauses itself (auto-pause, sent to its own notifyUrl).

A receiver that is down (a closed port) delays nothing: backups are taken on schedule
while backtor_notify fails and is retried, and the failures are counted on /metrics.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from backtor.conductor.http import ConductorClient
from backtor.conductor.names import BACKTOR_NOTIFY, DELIVER_NOTICE
from backtor.conductor.registration import DEFINITIONS, register_definitions
from backtor.core.notices import EVENT_HEADER, KEY_HEADER
from backtor.db.models import BackupSpec, Fire, FireStatus, Notice
from tests.e2e.conftest import Stack
from tests.support import processes
from tests.support.conductor import stop_open_runs, workflows
from tests.support.receiver import Receiver, closed_url
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SECRET = "e2e-notify-s3cret"
TOKEN = "e2e-url-token"
AUTO_PAUSED = "auto-paused after 2 consecutive failed backups; last: create_backup FAILED"


def notices_of(stack: Stack, name: str) -> list[Notice]:
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session:
            return list(
                session.scalars(select(Notice).where(Notice.spec_name == name).order_by(Notice.id))
            )
    finally:
        engine.dispose()


def backdate(stack: Stack, name: str, by: timedelta) -> None:
    """The spec has existed, unchanged, for `by` (and never had a successful backup)."""
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session, session.begin():
            then = datetime.now(UTC) - by
            session.execute(
                update(BackupSpec)
                .where(BackupSpec.name == name)
                .values(created_at=then, last_update=then)
            )
    finally:
        engine.dispose()


def fires_of(stack: Stack, name: str) -> list[Fire]:
    return stack.fires(name)


def metric(api: str, name: str) -> float:
    text = requests.get(f"{api}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def clean_up(stack: Stack, names: list[str]) -> None:
    """Stop this test's backtor_notify runs still open on the shared server."""
    for name in names:
        for notice in notices_of(stack, name):
            stop_open_runs(stack.conductor, BACKTOR_NOTIFY, notice.key)


def logs_hold_no_secret(stack: Stack) -> None:
    for log in stack.logs.glob("*.log"):
        text = log.read_text(errors="replace")
        assert TOKEN not in text, f"{log.name} holds the URL's query string"
        assert SECRET not in text, f"{log.name} holds the signing secret"


def test_a_receiver_gets_signed_notices_for_failure_overdue_auto_pause_and_recovery(
    stack: Stack,
) -> None:
    with Receiver().running() as receiver:
        env = {
            **stack.env,
            "BACKTOR_NOTIFY_URL": receiver.url("/hook", f"token={TOKEN}"),
            "BACKTOR_NOTIFY_SECRET": SECRET,
        }
        stack.storage.fail_backups = 2  # the next two backups fail: flaky's first two
        broken = f"{stack.prefix}-pausing"
        stack.storage.broken_for.add(broken)  # every backup of this spec fails
        names: list[str] = []
        try:
            with processes.workers(env, stack.logs):
                flaky = stack.create("flaky", backupCronString="*/2 * * * * *")
                names.append(flaky)
                # Its own receiver URL (notifyUrl beats BACKTOR_NOTIFY_URL): a path of its own.
                pausing = stack.create(
                    "pausing",
                    backupCronString="*/2 * * * * *",
                    autoPauseAfterFailures=2,
                    notifyUrl=receiver.url("/paused"),
                )
                assert pausing == broken
                names.append(pausing)
                late = stack.create("late", backupCronString="0 0 0 1 1 *")  # once a year
                names.append(late)
                backdate(stack, late, timedelta(days=3 * 366))

                wait_until(
                    lambda: (
                        Counter(r.event for r in receiver.events(flaky))
                        >= Counter({"backup.failed": 2, "spec.recovered": 1})
                    ),
                    timeout=90,
                    what="two failures and the recovery of the flaky spec",
                )
                wait_until(
                    lambda: [r for r in receiver.events(pausing) if r.event == "spec.auto_paused"],
                    timeout=60,
                    what="the auto-pause notice",
                )
                paused = stack.spec(pausing)  # GET /backup/{name}
                wait_until(
                    lambda: [r for r in receiver.events(late) if r.event == "spec.overdue"],
                    timeout=60,
                    what="the overdue notice",
                )
                triggered = requests.post(f"{stack.api}/backup/{late}/materialized", timeout=10)
                assert triggered.status_code == 202, triggered.text
                wait_until(
                    lambda: [r for r in receiver.events(late) if r.event == "spec.recovered"],
                    timeout=60,
                    what="the late spec's recovery",
                )

                def pausing_settled() -> bool:
                    """Each of its failed backups recorded (a fire due at the pause may still
                    have started, and failed too) and notified, every notice delivered."""
                    runs = stack.creates(pausing)
                    kinds = Counter(n.kind for n in notices_of(stack, pausing))
                    return (
                        not any(w["status"] == "RUNNING" for w in runs)
                        and len(stack.backups(pausing, status="FAILED")) == len(runs)
                        and kinds == Counter({"backup.failed": len(runs), "spec.auto_paused": 1})
                    )

                wait_until(pausing_settled, timeout=30, what="the paused spec settled")
                wait_until(
                    lambda: all(
                        n.status == "DELIVERED"
                        for n in notices_of(stack, flaky) + notices_of(stack, pausing)
                    ),
                    timeout=30,
                    what="every notice recorded DELIVERED",
                )
                stack.update(flaky, enabled=0)
        finally:
            clean_up(stack, names)

    received = receiver.all()
    for got in received:
        payload = got.payload
        assert got.verified(SECRET), payload
        if payload["spec"] == pausing:
            assert (got.path, got.query) == ("/paused", "")  # the spec's own notifyUrl
        else:
            assert (got.path, got.query) == ("/hook", f"token={TOKEN}")
        assert payload["schemaVersion"] == 1
        assert got.headers[KEY_HEADER] == payload["idempotencyKey"]
        assert got.headers[EVENT_HEADER] == payload["event"]
    by_key = {got.payload["idempotencyKey"]: got.payload for got in received}
    flaky_events = Counter(p["event"] for p in by_key.values() if p["spec"] == flaky)
    assert flaky_events["backup.failed"] == 2 and flaky_events["spec.recovered"] == 1
    failures = [p for p in by_key.values() if p["event"] == "backup.failed" and p["spec"] == flaky]
    assert {p["workflowId"] for p in failures} == {
        w["workflowId"] for w in stack.creates(flaky) if w["status"] == "FAILED"
    }
    assert all("told to fail" in str(p["details"]["error"]) for p in failures)
    # The broken spec: a notice per failed backup, then one that it paused itself, which
    # says what GET says; no recovery. GET shows it paused, with the reason.
    assert (paused["enabled"], paused["nextFireTime"]) == (0, None)
    assert paused["pausedReason"].startswith(AUTO_PAUSED), paused["pausedReason"]
    assert "test storage: target broken" in paused["pausedReason"]
    assert stack.spec(pausing)["pausedReason"] == paused["pausedReason"]
    pausing_runs = stack.creates(pausing)
    # (A fire due when it paused may still start, and fail: test_pause_and_delay counts them.)
    assert len(pausing_runs) >= 2 and {w["status"] for w in pausing_runs} == {"FAILED"}
    pausing_events = Counter(p["event"] for p in by_key.values() if p["spec"] == pausing)
    assert pausing_events == Counter({"backup.failed": len(pausing_runs), "spec.auto_paused": 1}), (
        pausing_events
    )
    (auto_paused,) = [p for p in by_key.values() if p["event"] == "spec.auto_paused"]
    assert auto_paused["spec"] == pausing
    assert auto_paused["details"] == {
        "consecutiveFailures": 2,
        "pausedReason": paused["pausedReason"],
    }
    pausing_failures = [
        p for p in by_key.values() if p["event"] == "backup.failed" and p["spec"] == pausing
    ]
    assert {p["workflowId"] for p in pausing_failures} == {w["workflowId"] for w in pausing_runs}
    # The auto-pause names the failed run that reached the threshold.
    assert auto_paused["workflowId"] in {p["workflowId"] for p in pausing_failures}
    late_events = [p["event"] for p in by_key.values() if p["spec"] == late]
    assert late_events == ["spec.overdue", "spec.recovered"]  # one notice per episode
    overdue = next(p for p in by_key.values() if p["event"] == "spec.overdue")
    assert overdue["details"]["lastSuccessAt"] is None
    # Every notice went through its own backtor_notify, correlated by its key.
    for notice in notices_of(stack, flaky) + notices_of(stack, late) + notices_of(stack, pausing):
        runs = workflows(stack.conductor, BACKTOR_NOTIFY, notice.key)
        assert [r["workflowId"] for r in runs] == [notice.notify_workflow_id]
        assert TOKEN not in str(runs[0]["input"])
    assert metric(stack.api, "backtor_notify_delivered_total") >= len(by_key)
    logs_hold_no_secret(stack)


@contextmanager
def quick_retries(conductor_url: str) -> Iterator[None]:
    """Operator tuning in Conductor: deliver_notice retried twice, 1 s then 2 s later (the
    shipped definition waits 15 s, doubling). Restored afterwards for the other tests."""
    client = ConductorClient(conductor_url)
    tuned = {**DEFINITIONS.task_defs[DELIVER_NOTICE], "retryCount": 2, "retryDelaySeconds": 1}
    try:
        client.update_task_def(tuned)
        yield
    finally:
        register_definitions(client)
        client.close()


def test_a_receiver_that_is_down_delays_nothing(stack: Stack) -> None:
    env = {
        **stack.env,
        "BACKTOR_NOTIFY_URL": closed_url("/hook", f"token={TOKEN}"),
        "BACKTOR_NOTIFY_SECRET": SECRET,
    }
    names: list[str] = []
    try:
        with processes.replicas(env, stack.logs) as replicas:
            replicas.append(processes.Replica(env, stack.logs, "notify-down"))
            wait_until(replicas[0].ready, timeout=90, what="the worker registered and ready")
            with quick_retries(stack.conductor):
                stack.storage.fail_backups = 3
                name = stack.create("steady", backupCronString="*/2 * * * * *")
                names.append(name)

                def settled() -> bool:
                    notices = notices_of(stack, name)
                    completed = [w for w in stack.creates(name) if w["status"] == "COMPLETED"]
                    return (
                        Counter(n.kind for n in notices)
                        == Counter({"backup.failed": 3, "spec.recovered": 1})
                        and all(n.status == "FAILED" for n in notices)
                        and len(completed) >= 8
                    )

                wait_until(settled, timeout=120, what="notices failed while backups went on")
                seen_until = datetime.now(UTC) - timedelta(seconds=3)
                failures = wait_until(
                    lambda: (v := metric(stack.api, "backtor_notify_failures_total")) >= 4 and v,
                    timeout=30,
                    what="the failures counted",
                )
                stack.update(name, enabled=0)
    finally:
        clean_up(stack, names)

    assert failures == 4
    assert metric(stack.api, "backtor_notify_delivered_total") == 0
    # Each notice was tried three times (once, then two retries) by its own workflow.
    for notice in notices_of(stack, name):
        (run,) = workflows(stack.conductor, BACKTOR_NOTIFY, notice.key)
        assert run["status"] == "FAILED"
        full = requests.get(f"{stack.conductor}/workflow/{run['workflowId']}", timeout=10).json()
        attempts = [t for t in full["tasks"] if t["taskType"] == DELIVER_NOTICE]
        assert [t["retryCount"] for t in attempts] == [0, 1, 2]
        assert all(TOKEN not in str(t.get("reasonForIncompletion")) for t in attempts)
    # Scheduling went on as if nothing happened: from the first fire the worker's runners
    # were up for (a worker's first seconds may pass over fires as misfires), every fire
    # time started, on time, while the notices failed and were retried.
    fires = [f for f in fires_of(stack, name) if not f.manual and f.scheduled_at < seen_until]
    first = next(i for i, f in enumerate(fires) if f.status == FireStatus.STARTED.value)
    fires = fires[first:]
    assert len(fires) >= 8
    assert fires and all(f.status == FireStatus.STARTED.value for f in fires), [
        (f.scheduled_at, f.status, f.skip_reason) for f in fires
    ]
    times = [f.scheduled_at for f in fires]
    assert all(b - a == timedelta(seconds=2) for a, b in itertools.pairwise(times))
    # Each started before the next was due (on a loaded 2-core machine a start takes tenths
    # of a second, notices or not; the tick itself never waits for a receiver). The first
    # is left out: a new spec's first fire waits for the first pass that sees the spec, up
    # to 4 s after its creation (docs/scheduling.md, "The tick"), notices or not.
    lags = sorted(
        (f.started_at - f.scheduled_at).total_seconds() for f in fires[1:] if f.started_at
    )
    assert len(lags) == len(fires) - 1 and lags[-1] < 2.0, lags
    logs_hold_no_secret(stack)
