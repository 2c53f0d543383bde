"""Failure notifications in the scheduling core: the outbox, its starter and follower, the
overdue check, delivery through backtor_notify (SQLite and the Conductor twin, simulated time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from backtor.conductor import webhooks
from backtor.conductor.names import BACKTOR_NOTIFY, DELIVER_NOTICE, REMOVE_BACKUP
from backtor.conductor.payloads import TaskStatus, WorkflowStatus
from backtor.conductor.registration import DEFINITIONS
from backtor.conductor.twin import FaultKind, Operation
from backtor.core.notices import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NoticeKind,
    verify,
)
from backtor.db import counters
from backtor.db.models import Backup, BackupSpec, BackupStatus, Notice
from backtor.scheduling import notices
from backtor.scheduling.handlers import record_backup
from backtor.scheduling.recording import record_failed
from backtor.scheduling.removals import FAILURES_SHOWN, reconcile_removals
from backtor.scheduling.tick import run_tick
from tests.scheduling.conftest import Core

URL = "https://hooks.example/backtor?token=t0ken-in-query"
SECRET = "s3cret-signing-key"


@dataclass
class Receiver:
    """A receiver stand-in for `deliver`: records each POST, answers from `answers`."""

    answers: list[int] = field(default_factory=list)
    got: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> webhooks.Posted:
        self.got.append((url, body, dict(headers)))
        status = self.answers.pop(0) if self.answers else 204
        if 200 <= status < 300:
            return webhooks.Posted(status)
        return webhooks.Posted(status, f"{webhooks.redact(url)} answered HTTP {status}")

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.got]


@pytest.fixture
def notifying(core: Core) -> Core:
    """The core with a global receiver (BACKTOR_NOTIFY_URL) and a signing secret."""
    settings = dataclasses.replace(core.services.settings, notify_url=URL, notify_secret=SECRET)
    core.services = dataclasses.replace(core.services, settings=settings)
    return core


def rows(core: Core) -> list[Notice]:
    with core.services.db() as session:
        return list(session.scalars(select(Notice).order_by(Notice.id)))


def counted(core: Core, name: str) -> float:
    with core.services.db() as session:
        return sum(v for n, _, _, v in counters.read_all(session) if n == name)


def spec_row(core: Core, name: str) -> BackupSpec:
    with core.services.db() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == name))
        assert spec is not None
        return spec


def fail_next_backup(core: Core, name: str) -> str:
    """The due fire starts; the storage worker fails it (terminally); returns the run's id."""
    core.advance_to(core.due(name), plus=0.2)
    assert run_tick(core.services).started == 1
    polled = core.twin.poll_task("backup", "storage-1")
    assert polled is not None
    core.twin.update_task(polled, "FAILED_WITH_TERMINAL_ERROR", {}, reason="disk full")
    return polled.workflow_id


def take_next_backup(core: Core, name: str) -> str:
    """The due fire starts, its backup is taken and recorded by apply_retention."""
    core.advance_to(core.due(name), plus=0.2)
    assert run_tick(core.services).started == 1
    polled = core.twin.poll_task("backup", "storage-1")
    assert polled is not None
    core.twin.update_task(polled, "COMPLETED", {"dataId": f"{name}-{core.now():%H%M%S}"})
    recording = core.twin.poll_task("apply_retention", "backtor-1")
    assert recording is not None
    outcome = record_backup(core.services, recording.input, recording.workflow_id)
    core.twin.update_task(recording, outcome.status, outcome.output)
    return recording.workflow_id


def deliver_all(core: Core, receiver: Receiver) -> int:
    """Backtor's worker: every deliver_notice task Conductor hands out now."""
    handled = 0
    while (task := core.twin.poll_task(DELIVER_NOTICE, "backtor-1")) is not None:
        outcome = notices.deliver(core.services, task.input, task.workflow_id, post=receiver)
        core.twin.update_task(task, outcome.status, outcome.output, reason=outcome.reason)
        handled += 1
    return handled


# -- writing notices ------------------------------------------------------------------------


def test_no_receiver_configured_writes_no_notice(core: Core) -> None:
    core.add_spec("quiet")
    with core.services.db.begin() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == "quiet"))
        assert spec is not None
        written = notices.notify(
            session, spec, NoticeKind.BACKUP_FAILED, "k-1", "wf-1", {}, core.now()
        )
        assert written is False and spec.alerting is False
    assert rows(core) == []


def test_notify_is_idempotent_on_its_key_and_prefers_the_specs_own_url(notifying: Core) -> None:
    core = notifying
    core.add_spec("own")
    core.add_spec("global")
    with core.services.db.begin() as session:
        session.execute(
            update(BackupSpec)
            .where(BackupSpec.name == "own")
            .values(notify_url="http://own.example/hook")
        )
    with core.services.db.begin() as session:
        own, default = (
            session.scalar(select(BackupSpec).where(BackupSpec.name == name))
            for name in ("own", "global")
        )
        assert own is not None and default is not None
        kind = NoticeKind.BACKUP_FAILED
        first = notices.notify(session, own, kind, "same-key", "wf-1", {"a": 1}, core.now())
        again = notices.notify(session, own, kind, "same-key", "wf-1", {"a": 2}, core.now())
        other = notices.notify(session, default, kind, "other-key", None, {}, core.now())
    assert (first, again, other) == (True, False, True)
    written = rows(core)
    assert [(n.key, n.spec_name, n.url, n.status) for n in written] == [
        ("same-key", "own", "http://own.example/hook", "PENDING"),
        ("other-key", "global", URL, "PENDING"),
    ]
    assert json.loads(written[0].details) == {"a": 1}  # the first write stands
    assert spec_row(core, "own").alerting is True


def test_a_key_too_long_for_its_column_stays_unique() -> None:
    long_a, long_b = "k" * 300 + "a", "k" * 300 + "b"
    assert len(notices.bounded_key(long_a)) == notices.MAX_KEY_CHARS
    assert notices.bounded_key(long_a) != notices.bounded_key(long_b)
    assert notices.bounded_key("short") == "short"


# -- the events -------------------------------------------------------------------------------


def test_a_failed_backup_then_a_success_notify_failure_and_recovery(notifying: Core) -> None:
    core = notifying
    core.add_spec("nightly", cron="*/10 * * * * *")
    receiver = Receiver()
    failed_run = fail_next_backup(core, "nightly")
    core.advance(1.0)
    run_tick(core.services)  # records the failure, writes the notice, starts backtor_notify

    (failure,) = rows(core)
    assert (failure.kind, failure.key, failure.workflow_id) == (
        "backup.failed",
        f"backup.failed:{failed_run}",
        failed_run,
    )
    assert failure.status == "STARTED" and failure.notify_workflow_id is not None
    run = core.twin.get_workflow(failure.notify_workflow_id)
    assert run.name == BACKTOR_NOTIFY and run.correlation_id == failure.key
    assert "token" not in json.dumps(run.input)  # the URL never reaches Conductor
    assert spec_row(core, "nightly").alerting is True

    assert deliver_all(core, receiver) == 1
    take_next_backup(core, "nightly")
    core.advance(1.0)
    run_tick(core.services)
    assert deliver_all(core, receiver) == 1
    run_tick(core.services)

    assert [(p["event"], p["spec"]) for p in receiver.payloads()] == [
        ("backup.failed", "nightly"),
        ("spec.recovered", "nightly"),
    ]
    assert receiver.payloads()[0]["details"] == {
        "status": "FAILED",
        "error": "create_backup FAILED: "
        + (core.twin.get_workflow(failed_run).reason or "no reason given"),
    }
    for url, body, headers in receiver.got:
        assert url == URL
        assert verify(body, SECRET, int(headers[TIMESTAMP_HEADER]), headers[SIGNATURE_HEADER])
        assert headers[KEY_HEADER] == json.loads(body)["idempotencyKey"]
    assert [n.status for n in rows(core)] == ["DELIVERED", "DELIVERED"]
    assert counted(core, counters.NOTIFY_DELIVERED) == 2
    assert spec_row(core, "nightly").alerting is False

    take_next_backup(core, "nightly")  # a success with no alert before it: nothing
    assert len(rows(core)) == 2


def test_a_failure_backtor_caused_on_purpose_sends_nothing(notifying: Core) -> None:
    """Only failures that count as failures notify (record_failed's counts_as_failure)."""
    core = notifying
    spec_id = core.add_spec("ours").id
    with core.services.db.begin() as session:
        spec = session.get(BackupSpec, spec_id)
        assert spec is not None
        record_failed(
            session,
            spec,
            workflow_id="wf-terminated-on-purpose",
            status=BackupStatus.FAILED,
            scheduled_at=core.now(),
            start_time=None,
            end_time=core.now(),
            error="terminated by Backtor",
            counts_as_failure=False,
        )
    assert rows(core) == []


def test_a_failed_removal_notifies_its_first_and_third_failure(notifying: Core) -> None:
    core = notifying
    spec = core.add_spec("rm")
    with core.services.db.begin() as session:
        backup_id = session.execute(
            insert(Backup)
            .values(
                spec_id=spec.id,
                status=BackupStatus.REMOVING.value,
                data_id="rm-1",
                scheduled_at=core.now(),
            )
            .returning(Backup.id)
        ).scalar_one()
    runs = []
    for _ in range(FAILURES_SHOWN):
        run = core.twin.start_workflow(
            REMOVE_BACKUP,
            version=DEFINITIONS.workflow_version(REMOVE_BACKUP),
            correlation_id="rm",
            input={"backupId": backup_id},
        )
        core.twin.terminate_workflow(run, "test: the storage worker gave up")
        runs.append(run)
        with core.services.db.begin() as session:
            session.execute(
                update(Backup).where(Backup.id == backup_id).values(remove_workflow_id=run)
            )
        reconcile_removals(core.services)

    assert [(n.kind, n.workflow_id) for n in rows(core)] == [
        ("removal.failed", runs[0]),
        ("removal.failed", runs[2]),
    ]
    assert [json.loads(n.details)["attempt"] for n in rows(core)] == [1, FAILURES_SHOWN]
    assert FAILURES_SHOWN in notices.REMOVAL_ATTEMPTS_NOTIFIED  # the REMOVE_FAILED one


def test_auto_pause_notifies_and_alerts(notifying: Core) -> None:
    """At the scheduling level: what the auto-pause calls when it disables a spec."""
    core = notifying
    core.add_spec("flaky")
    receiver = Receiver()
    with core.services.db.begin() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == "flaky"))
        assert spec is not None
        reason = "auto-paused after 3 consecutive failed backups; last: disk full"
        assert notices.auto_paused(session, spec, 3, reason, core.now(), "wf-3")
    run_tick(core.services)
    deliver_all(core, receiver)

    (payload,) = receiver.payloads()
    assert payload["event"] == "spec.auto_paused"
    assert payload["details"] == {"consecutiveFailures": 3, "pausedReason": reason}
    assert payload["workflowId"] == "wf-3"
    _, body, headers = receiver.got[0]
    assert verify(body, SECRET, int(headers[TIMESTAMP_HEADER]), headers[SIGNATURE_HEADER])
    assert spec_row(core, "flaky").alerting is True


# -- overdue ---------------------------------------------------------------------------------


def test_an_overdue_spec_is_notified_once_per_episode(notifying: Core) -> None:
    core = notifying
    core.add_spec("late", cron="0 * * * * *")  # every minute: overdue after 450 s (1.5 x 300)
    core.advance(449.0)
    assert notices.check_overdue(core.services) == 0
    core.advance(notices.OVERDUE_EVERY.total_seconds())  # 464 s without a success
    assert notices.check_overdue(core.services) == 1
    core.advance(notices.OVERDUE_EVERY.total_seconds())
    assert notices.check_overdue(core.services) == 0  # the same episode

    (overdue,) = rows(core)
    details = json.loads(overdue.details)
    assert overdue.kind == "spec.overdue" and overdue.workflow_id is None
    assert details["limitSeconds"] == 450 and details["lastSuccessAt"] is None
    assert spec_row(core, "late").overdue_notified_at is not None

    with core.services.db.begin() as session:  # a backup succeeds: the episode ends
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == "late"))
        assert spec is not None
        backup = Backup(
            spec_id=spec.id,
            status=BackupStatus.COMPLETED.value,
            data_id="late-1",
            backup_task_id="task-1",
            scheduled_at=core.now(),
            end_time=core.now(),
        )
        session.add(backup)
        session.flush()
        assert notices.backup_succeeded(session, spec, backup)
    core.advance(460.0)
    assert notices.check_overdue(core.services) == 1  # a new episode, a new notice
    assert [n.kind for n in rows(core)] == ["spec.overdue", "spec.recovered", "spec.overdue"]
    assert len({n.key for n in rows(core)}) == 3


def test_a_pass_that_found_the_outbox_empty_still_starts_the_overdue_notice_it_writes(
    notifying: Core,
) -> None:
    """The pass's look-ahead said no notice was open; the overdue check then wrote one."""
    core = notifying
    core.add_spec("late", cron="0 * * * * *")
    core.advance(464.0)
    notices.notice_step(core.services, outbox=False)
    (overdue,) = rows(core)
    assert (overdue.kind, overdue.status) == ("spec.overdue", "STARTED")
    assert overdue.notify_workflow_id is not None


def test_a_pass_that_found_the_outbox_empty_reads_it_no_further(notifying: Core) -> None:
    core = notifying
    spec_id = core.add_spec("late", cron="0 * * * * *").id
    with core.services.db.begin() as session:  # open, but the pass's look-ahead missed it
        spec = session.get(BackupSpec, spec_id)
        assert spec is not None
        notices.notify(session, spec, "spec.recovered", "late/recovered", None, {}, core.now())
    notices.notice_step(core.services, outbox=False)
    assert [n.status for n in rows(core)] == ["PENDING"]
    notices.notice_step(core.services)
    assert [n.status for n in rows(core)] == ["STARTED"]


def test_the_overdue_check_runs_at_most_every_few_seconds_over_a_rolling_window(
    notifying: Core,
) -> None:
    core = notifying
    for name in ("a", "b", "c"):
        core.add_spec(name, cron="0 * * * * *")
    core.advance(600.0)
    assert notices.check_overdue(core.services, limit=2) == 2
    assert notices.check_overdue(core.services, limit=2) == 0  # too soon: not even read
    core.advance(notices.OVERDUE_EVERY.total_seconds())
    assert notices.check_overdue(core.services, limit=2) == 1  # the window moved on
    assert sorted(n.spec_name for n in rows(core)) == ["a", "b", "c"]


def test_only_specs_with_a_receiver_are_checked_without_a_global_one(core: Core) -> None:
    core.add_spec("silent", cron="0 * * * * *")
    core.add_spec("loud", cron="0 * * * * *")
    with core.services.db.begin() as session:
        session.execute(
            update(BackupSpec).where(BackupSpec.name == "loud").values(notify_url="http://l/")
        )
    core.advance(600.0)
    assert notices.check_overdue(core.services) == 1
    assert [n.spec_name for n in rows(core)] == ["loud"]
    assert spec_row(core, "silent").overdue_notified_at is None


def test_disabled_specs_are_never_overdue(notifying: Core) -> None:
    core = notifying
    core.add_spec("off", cron="0 * * * * *", enabled=False)
    core.advance(3600.0)
    assert notices.check_overdue(core.services) == 0


# -- starting and following backtor_notify ---------------------------------------------------


def write_notices(core: Core, count: int, spec_name: str = "many") -> None:
    core.add_spec(spec_name, cron="0 0 0 1 1 *")  # never due in these tests
    with core.services.db.begin() as session:
        spec = session.scalar(select(BackupSpec).where(BackupSpec.name == spec_name))
        assert spec is not None
        for i in range(count):
            kind = NoticeKind.BACKUP_FAILED
            notices.notify(session, spec, kind, f"k-{i}", f"wf-{i}", {}, core.now())


def test_pending_notices_start_in_small_batches(notifying: Core) -> None:
    core = notifying
    write_notices(core, notices.START_BATCH + 5)
    assert notices.start_pending_notices(core.services) == notices.START_BATCH
    assert notices.start_pending_notices(core.services) == 5
    assert notices.start_pending_notices(core.services) == 0
    started = rows(core)
    assert {n.status for n in started} == {"STARTED"}
    runs = core.twin.workflows(BACKTOR_NOTIFY)
    assert sorted(str(r.correlation_id) for r in runs) == sorted(n.key for n in started)
    assert {r.workflow_id for r in runs} == {n.notify_workflow_id for n in started}


def test_a_start_whose_answer_was_lost_is_adopted_not_repeated(notifying: Core) -> None:
    core = notifying
    write_notices(core, 1)
    core.twin.faults.inject(Operation.START_WORKFLOW, FaultKind.LOST_ANSWER)
    notices.notice_step(core.services)  # the start happened; its answer never came
    assert [n.status for n in rows(core)] == ["PENDING"]
    assert len(core.twin.workflows(BACKTOR_NOTIFY)) == 1

    assert notices.start_pending_notices(core.services) == 1
    (notice,) = rows(core)
    (run,) = core.twin.workflows(BACKTOR_NOTIFY)
    assert (notice.status, notice.notify_workflow_id) == ("STARTED", run.workflow_id)


def test_conductor_unavailable_leaves_notices_pending_for_the_next_pass(notifying: Core) -> None:
    core = notifying
    write_notices(core, 2)
    core.twin.faults.inject(Operation.GET_CORRELATED, FaultKind.UNAVAILABLE)
    notices.notice_step(core.services)
    assert [n.status for n in rows(core)] == ["PENDING", "PENDING"]
    assert core.twin.workflows(BACKTOR_NOTIFY) == []
    notices.notice_step(core.services)
    assert [n.status for n in rows(core)] == ["STARTED", "STARTED"]


def test_a_receiver_that_fails_is_retried_with_backoff_then_the_notice_fails(
    notifying: Core,
) -> None:
    core = notifying
    write_notices(core, 1)
    notices.start_pending_notices(core.services)
    receiver = Receiver(answers=[503] * 100)
    definition = DEFINITIONS.task_defs[DELIVER_NOTICE]
    assert definition["retryLogic"] == "EXPONENTIAL_BACKOFF"
    delays = []
    for attempt in range(int(definition["retryCount"]) + 1):
        assert deliver_all(core, receiver) == 1, f"attempt {attempt}"
        (run,) = core.twin.workflows(BACKTOR_NOTIFY)
        if run.status is not WorkflowStatus.RUNNING:
            break
        waiting = [t for t in core.twin.pending_tasks([DELIVER_NOTICE])]
        assert len(waiting) == 1 and waiting[0].status is TaskStatus.SCHEDULED
        delay = waiting[0].callback_after_seconds
        delays.append(delay)
        notices.follow_notices(core.services)
        assert [n.status for n in rows(core)] == ["STARTED"]  # still being retried
        core.advance(delay)
    base = int(definition["retryDelaySeconds"])
    assert delays == [base * 2**i for i in range(int(definition["retryCount"]))]
    assert len(receiver.got) == int(definition["retryCount"]) + 1
    (run,) = core.twin.workflows(BACKTOR_NOTIFY)
    assert run.status is WorkflowStatus.FAILED

    notices.follow_notices(core.services)
    notices.follow_notices(core.services)  # counted once, however many passes see it
    assert [n.status for n in rows(core)] == ["FAILED"]
    assert counted(core, counters.NOTIFY_FAILURES) == 1
    assert counted(core, counters.NOTIFY_DELIVERED) == 0

    # An operator retries it from Conductor's UI, and the receiver is back.
    core.twin.retry_workflow(run.workflow_id)
    deliver_all(core, Receiver())
    assert [n.status for n in rows(core)] == ["DELIVERED"]
    assert counted(core, counters.NOTIFY_DELIVERED) == 1


def test_a_notice_delivered_before_its_start_was_recorded_stays_delivered(
    notifying: Core,
) -> None:
    core = notifying
    write_notices(core, 1)
    (notice,) = rows(core)
    run = core.twin.start_workflow(
        BACKTOR_NOTIFY,
        version=1,
        correlation_id=notice.key,
        input={"noticeKey": notice.key, "event": notice.kind, "backupName": "many"},
    )
    deliver_all(core, Receiver())  # the worker was faster than the starter's bookkeeping
    assert notices.start_pending_notices(core.services) == 0  # nothing PENDING any more
    assert [(n.status, n.notify_workflow_id) for n in rows(core)] == [("DELIVERED", run)]
    notices.follow_notices(core.services)
    assert counted(core, counters.NOTIFY_DELIVERED) == 1


# -- delivery ----------------------------------------------------------------------------------


def test_deliver_signs_the_payload_and_never_logs_the_url_query_or_secret(
    notifying: Core, caplog: pytest.LogCaptureFixture
) -> None:
    core = notifying
    write_notices(core, 1)
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(answers=[500, 200])
    first = notices.deliver(core.services, {"noticeKey": "k-0"}, "wf-n", post=receiver)
    second = notices.deliver(core.services, {"noticeKey": "k-0"}, "wf-n", post=receiver)

    assert first.status == "FAILED" and first.reason is not None
    assert "token" not in first.reason and "hooks.example/backtor" in first.reason
    assert (second.status, second.output) == ("COMPLETED", {"delivered": True, "httpStatus": 200})
    (_, body, headers), _ = receiver.got
    payload = json.loads(body)
    assert payload["schemaVersion"] == 1 and payload["idempotencyKey"] == "k-0"
    assert verify(body, SECRET, int(headers[TIMESTAMP_HEADER]), headers[SIGNATURE_HEADER])
    assert not verify(
        body, "another secret", int(headers[TIMESTAMP_HEADER]), headers[SIGNATURE_HEADER]
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "delivered" in logged
    assert "t0ken-in-query" not in logged and SECRET not in logged


def test_without_a_secret_the_notice_is_sent_unsigned(core: Core) -> None:
    settings = dataclasses.replace(core.services.settings, notify_url=URL)
    core.services = dataclasses.replace(core.services, settings=settings)
    write_notices(core, 1)
    receiver = Receiver()
    notices.deliver(core.services, {"noticeKey": "k-0"}, "wf-n", post=receiver)
    ((_, _, headers),) = receiver.got
    assert SIGNATURE_HEADER not in headers and headers[KEY_HEADER] == "k-0"


def test_a_notice_this_database_does_not_hold_fails_terminally(notifying: Core) -> None:
    outcome = notices.deliver(notifying.services, {"noticeKey": "elsewhere"}, "wf", Receiver())
    assert outcome.status == "FAILED_WITH_TERMINAL_ERROR"


# -- the tick --------------------------------------------------------------------------------


def test_a_failing_notice_step_never_fails_the_pass(
    notifying: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = notifying
    core.add_spec("steady", cron="*/10 * * * * *")
    write_notices(core, 1)

    def broken(*_args: Any, **_kwargs: Any) -> int:
        raise RuntimeError("the notices table is on fire")

    monkeypatch.setattr(notices, "start_pending_notices", broken)
    monkeypatch.setattr(notices, "check_overdue", broken)
    core.advance_to(core.due("steady"), plus=0.2)
    report = run_tick(core.services)
    assert report.started == 1 and report.healthy
    assert [n.status for n in rows(core)] == ["PENDING"]


def test_the_pass_starts_notices_after_its_own_work(notifying: Core) -> None:
    core = notifying
    core.add_spec("steady", cron="*/10 * * * * *")
    write_notices(core, 3)
    core.advance_to(core.due("steady"), plus=0.2)
    report = run_tick(core.services)
    assert report.started == 1
    assert [n.status for n in rows(core)] == ["STARTED"] * 3
