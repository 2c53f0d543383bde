"""The storage layer on both backends: aware UTC datetimes, cascades, SQLite settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from backtor.db.engine import make_engine, mask_url
from backtor.db.models import Backup, BackupSpec

pytestmark = pytest.mark.integration


def _spec(name: str, **fields: object) -> BackupSpec:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "name": name,
        "cron_string": "0 0 0 * * *",
        "retention_minutely": "0@L",
        "retention_hourly": "0@L",
        "retention_daily": "4@L",
        "retention_weekly": "4@L",
        "retention_monthly": "3@L",
        "retention_yearly": "2@L",
        "last_update": now,
        "created_at": now,
    }
    values.update(fields)
    return BackupSpec(**values)


def test_datetimes_come_back_aware_in_utc(session: Session) -> None:
    tokyo = timezone(timedelta(hours=9))
    given = datetime(2024, 6, 1, 9, 30, 15, 123456, tzinfo=tokyo)
    session.add(_spec("db1", from_date=given, next_fire_at=given))
    session.commit()
    session.expunge_all()
    stored = session.query(BackupSpec).filter_by(name="db1").one()
    assert stored.from_date == given
    assert stored.from_date is not None and stored.from_date.tzinfo == UTC
    assert stored.from_date.hour == 0
    assert stored.to_date is None
    assert stored.enabled is True and stored.deleting is False
    assert stored.timezone == "UTC" and stored.misfire_grace_seconds == 3600


def test_naive_datetimes_are_refused(session: Session) -> None:
    session.add(_spec("db1", from_date=datetime(2024, 1, 1)))
    with pytest.raises(StatementError, match="naive datetime"):
        session.commit()


def test_deleting_a_spec_deletes_its_backups(session: Session, engine: Engine) -> None:
    spec = _spec("db1")
    session.add(spec)
    session.flush()
    session.add(Backup(spec_id=spec.id, status="COMPLETED", scheduled_at=datetime.now(UTC)))
    session.commit()
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM backup_spec WHERE name = :name"), {"name": "db1"})
        assert connection.execute(text("SELECT count(*) FROM backup")).scalar_one() == 0


def test_sqlite_is_set_up_for_concurrent_use(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/sub/dir/x.db")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() >= 5000
    finally:
        engine.dispose()


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg://user:p%40ss@db:5432/backtor")
    assert "p%40ss" not in masked and "p@ss" not in masked
    assert masked.startswith("postgresql+psycopg://user:***@db:5432/backtor")
