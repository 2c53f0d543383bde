"""Observability end to end: real Conductor, PostgreSQL, worker and API processes.

The figures on /metrics are read from a SECOND API process that did none of the work; the
worker's probes are read over HTTP; the logs of every process are searched for secrets.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from backtor.db.migrate import upgrade_to_head
from backtor.db.models import Backup, BackupSpec, Fire
from tests.e2e.conftest import Stack
from tests.integration.test_metrics_deploy import (
    DASHBOARD,
    METRIC,
    alert_expressions,
    dashboard_queries,
    declared_names,
)
from tests.support import processes
from tests.support.net import free_port
from tests.support.storage import FileStorageWorker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROCESS_LOCAL = ("backtor_api_invocations", "backtor_sql", "backtor_conductor_invocation")


def scrape(base: str) -> tuple[str, Samples]:
    text = requests.get(f"{base}/metrics", timeout=30).text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def shared(samples: Samples) -> Samples:
    return {key: v for key, v in samples.items() if not key[0].startswith(PROCESS_LOCAL)}


def ledger(database_url: str, name: str) -> list[Fire]:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == name))
            return list(session.scalars(select(Fire).where(Fire.spec_id == spec_id)))
    finally:
        engine.dispose()


def probe(port: int, path: str) -> requests.Response | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=3)
    except requests.RequestException:
        return None


def test_a_real_cycle_is_counted_on_a_second_api(stack: Stack) -> None:
    health_port = free_port()
    env = stack.env | {
        "BACKTOR_WORKER_HEALTH_PORT": str(health_port),
        "BACKTOR_WORKER_HEALTH_HOST": "127.0.0.1",
    }
    with processes.workers(env, stack.logs):
        name = stack.create("metrics", backupCronString="*/2 * * * * *", retentionMinutely="1")
        ready = wait_until(
            lambda: (r := probe(health_port, "/ready")) is not None and r.status_code == 200 and r,
            timeout=60,
            what="the worker's readiness",
        )
        assert ready.json()["checks"] == {
            "registered": True,
            "runners": True,
            "conductor": True,
            "watchdog": True,
        }
        assert {r["task"] for r in ready.json()["runners"]} == {
            "evaluate_schedule",
            "apply_retention",
            "record_removal",
            "deliver_notice",
        }
        wait_until(
            lambda: (
                len([w for w in stack.creates(name) if w["status"] == "COMPLETED"]) >= 4
                and len(stack.backups(name, status="REMOVED")) >= 2
            ),
            timeout=90,
            what="backups taken and removed",
        )
        _, during = scrape(stack.api)
        assert value(during, "backtor_backup_expected_period_seconds", backup=name) == 2
        stack.update(name, enabled=0)

        def settled() -> bool:
            running = [
                w for w in stack.creates(name) + stack.removes(name) if w["status"] == "RUNNING"
            ]
            moving = [b for b in stack.backups(name) if b["status"] in ("REMOVING", "RUNNING")]
            open_fires = [
                f
                for f in ledger(stack.database_url, name)
                if f.status == "STARTED" and f.outcome is None
            ]
            return not running and not moving and not open_fires

        wait_until(settled, timeout=90, what="every run and removal recorded")
    # The workers are gone: nothing changes any more, and API 2 did none of the work.
    with processes.api_server(stack.env, stack.logs / "api-2.log") as second:
        exposition, seen = scrape(second)
        _, seen_by_first = scrape(stack.api)

    fires = ledger(stack.database_url, name)
    started = [f for f in fires if f.status == "STARTED"]
    skipped = Counter(f.skip_reason for f in fires if f.status == "SKIPPED")
    assert value(seen, "backtor_backup_trigger_total", backup=name, status="success") == len(
        started
    )
    assert (
        value(seen, "backtor_backup_trigger_total", backup=name, status="error") or 0
    ) == skipped["running"]
    for reason, count in skipped.items():
        assert value(seen, "backtor_backup_skipped_total", backup=name, reason=str(reason)) == count
    outcomes = Counter(f.outcome for f in started)
    for outcome, count in outcomes.items():
        assert value(seen, "backtor_workflow_total", backup=name, status=str(outcome)) == count
    completed = [w for w in stack.creates(name) if w["status"] == "COMPLETED"]
    assert value(seen, "backtor_workflow_total", backup=name, status="success") == len(completed)
    assert value(seen, "backtor_schedule_lag_seconds_count") == len(started)
    assert value(seen, "backtor_schedule_lag_seconds_bucket", le="+Inf") == len(started)

    backups = stack.backups(name)
    held = Counter(b["status"] for b in backups if b["status"] != "REMOVED")
    for status, count in held.items():
        assert value(seen, "backtor_backups", backup=name, status=status) == count
    assert {labels for metric, labels in seen if metric == "backtor_backups"} == {
        frozenset({"backup": name, "status": status}.items()) for status in held
    }
    removed = [b for b in backups if b["status"] == "REMOVED"]
    assert value(
        seen, "backtor_retention_backup_delete_total", backup=name, status="COMPLETED"
    ) == len(removed)
    newest = max(
        (b for b in backups if b["status"] == "COMPLETED"),
        key=lambda b: datetime.fromisoformat(b["endTime"]),
    )
    ended = datetime.fromisoformat(newest["endTime"]).timestamp()
    assert value(
        seen, "backtor_backup_last_success_timestamp_seconds", backup=name
    ) == pytest.approx(ended, abs=1e-3)
    assert value(seen, "backtor_backup_last_size_mbytes", backup=name) == newest["sizeMB"]
    assert newest["sizeMB"] == len(f"backup of {name}\n".encode()) / 1e6
    runs = value(seen, "backtor_retention_tasks_total")
    assert runs is not None and runs >= len(completed)
    assert value(seen, "backtor_backup_tag_total", backup=name, status="success") == runs
    assert value(seen, "backtor_removal_failures", backup=name) == 0
    assert value(seen, "backtor_backup_expected_period_seconds", backup=name) is None  # disabled
    tick = value(seen, "backtor_tick_last_run_timestamp_seconds")
    assert tick is not None and time.time() - tick < 120
    assert value(seen, "backtor_conductor_up") == 1
    assert value(seen, "backtor_database_up") == 1

    # Two replicas, one truth.
    assert shared(seen) == shared(seen_by_first)
    # Every metric the dashboard and the alert rules use is declared there.
    declared = declared_names(exposition)
    dashboard = json.loads(DASHBOARD.read_text())
    used = {m for q in dashboard_queries(dashboard) for m in METRIC.findall(q)}
    used |= {m for expr in alert_expressions() for m in METRIC.findall(expr)}
    assert used - declared == set()


def test_failing_removals_and_manual_triggers_show_on_a_second_api(stack: Stack) -> None:
    stack.storage.fail_removals = 1000  # every removal fails: they end REMOVE_FAILED
    with processes.workers(stack.env, stack.logs):
        wait_until(
            lambda: (
                requests.get(
                    f"{stack.conductor}/metadata/workflow/create_backup", timeout=10
                ).status_code
                == 200
            ),
            timeout=60,
            what="the worker to register the workflows",
        )
        failing = stack.create("failing", backupCronString="*/2 * * * * *", retentionMinutely="1")
        manual_only = stack.create("manual", backupCronString="0 0 3 * * *", enabled=0)
        # "Back up now" through API 1: counted by API 1's process, read from API 2.
        answer = requests.post(f"{stack.api}/backup/{manual_only}/materialized", timeout=30)
        assert answer.status_code == 202, answer.text
        wait_until(
            lambda: stack.backups(failing, status="REMOVE_FAILED"),
            timeout=90,
            what="a removal failing three times",
        )
        wait_until(
            lambda: all(f.outcome for f in ledger(stack.database_url, manual_only)),
            timeout=60,
            what="the manual backup's outcome recorded",
        )
    # The workers are gone: the database holds still while API 2 reads it.
    with processes.api_server(stack.env, stack.logs / "api-2.log") as second:
        _, seen = scrape(second)
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session:
            spec_id = session.scalar(select(BackupSpec.id).where(BackupSpec.name == failing))
            rows = session.execute(
                select(Backup.status, Backup.remove_attempts).where(Backup.spec_id == spec_id)
            ).all()
    finally:
        engine.dispose()
    failed = sum(1 for status, _ in rows if status == "REMOVE_FAILED")
    attempts = sum(count for _, count in rows)
    assert failed >= 1 and attempts >= 3
    assert value(seen, "backtor_removal_failures", backup=failing) == failed
    assert value(seen, "backtor_backups", backup=failing, status="REMOVE_FAILED") == failed
    # Each failure is counted in the transaction that records it: the two never disagree.
    deletes = value(seen, "backtor_retention_backup_delete_total", backup=failing, status="FAILED")
    assert deletes == attempts
    errors = value(seen, "backtor_backup_warn_total", backup=failing, status="error")
    assert errors is not None and errors >= attempts
    assert value(seen, "backtor_backup_trigger_total", backup=manual_only, status="success") == 1
    assert value(seen, "backtor_workflow_total", backup=manual_only, status="COMPLETED") == 1
    assert value(seen, "backtor_backups", backup=manual_only, status="COMPLETED") == 1
    assert value(seen, "backtor_backup_expected_period_seconds", backup=manual_only) is None


def test_worker_probes_say_alive_but_not_ready_without_conductor(
    postgres_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(postgres_url)
    health_port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = processes.backtor_env(
        postgres_url,
        nowhere,
        BACKTOR_WORKER_HEALTH_PORT=str(health_port),
        BACKTOR_WORKER_HEALTH_HOST="127.0.0.1",
    )
    with processes.workers(env, tmp_path):
        alive = wait_until(lambda: probe(health_port, "/health"), timeout=30, what="/health")
        assert alive.status_code == 200
        answer = probe(health_port, "/ready")
        assert answer is not None and answer.status_code == 503
        checks = answer.json()["checks"]
        assert checks["registered"] is False
        assert checks["conductor"] is False
        assert checks["runners"] is False
    assert probe(health_port, "/health") is None  # gone with the worker


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_keep_secrets_out_and_name_the_backup(
    log_format: str, postgres_url: str, conductor_url: str, tmp_path: Path
) -> None:
    """workerConfig and the database password never reach a log line of any process.

    The test role's real password is fixed (scripts/postgres), so the URL's password
    position carries a recognisable secret and the `password` query parameter (which
    SQLAlchemy's psycopg dialect applies last) the real one: anything that logged the
    URL, or the spec, would show the secret.
    """
    upgrade_to_head(postgres_url)
    marker = uuid.uuid4().hex[:10]
    config_secret = f"wc-secret-{marker}"
    password_secret = f"pw-secret-{marker}"
    user, _, rest = postgres_url.partition("://")[2].partition("@")
    role, _, real_password = user.partition(":")
    database_url = f"postgresql://{role}:{password_secret}@{rest}?password={real_password}"
    env = processes.backtor_env(
        database_url, conductor_url, LOG_FORMAT=log_format, BACKTOR_WORKER_HEALTH_PORT="0"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = f"log{marker}"
    name = f"{prefix}-spec"
    with (
        FileStorageWorker(conductor_url, tmp_path / "store", prefix=prefix),
        processes.api_server(env, logs / "api.log") as api,
        processes.workers(env, logs),
    ):
        body = {
            "name": name,
            "backupCronString": "*/2 * * * * *",
            "retentionMinutely": "1",
            "workerConfig": json.dumps({"token": config_secret}),
        }
        assert requests.post(f"{api}/backup", json=body, timeout=10).status_code == 201

        def materialized() -> list[dict[str, Any]]:
            answer = requests.get(f"{api}/backup/{name}/materialized", timeout=10)
            return list(answer.json())

        wait_until(
            lambda: len([b for b in materialized() if b["status"] == "REMOVED"]) >= 1,
            timeout=90,
            what="a backup taken and one removed",
        )
        requests.put(f"{api}/backup/{name}", json=body | {"enabled": 0}, timeout=10)
        requests.get(f"{api}/backup/{name}", timeout=10)  # answers with workerConfig: no log
        requests.get(f"{api}/metrics", timeout=10)
    lines = [
        line
        for path in sorted(logs.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
    ]
    assert len(lines) > 10
    leaked = [line for line in lines if config_secret in line or password_secret in line]
    assert leaked == []
    if log_format == "json":
        records = [json.loads(line) for line in lines if line.strip()]
        assert all(isinstance(record, dict) and "message" in record for record in records)
        about = [r for r in records if r.get("backup") == name]
        started = [
            r for r in about if "create_backup" in r["message"] and "started" in r["message"]
        ]
        ended = [
            r
            for r in about
            if r["logger"] == "backtor.scheduling.outcomes" and "ended" in r["message"]
        ]
        recorded = [r for r in about if "recorded (dataId" in r["message"]]
        for group in (started, ended, recorded):
            assert group, f"no such lines about {name}"
            assert all(r.get("workflow_id") for r in group), group
    else:
        started = [line for line in lines if "create_backup" in line and "started for" in line]
        assert started
        assert all(f"[backup={name} workflow_id=" in line for line in started), started
