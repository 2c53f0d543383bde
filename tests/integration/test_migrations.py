"""The Alembic migrations: empty -> head -> base on a real PostgreSQL (and on SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from backtor.db.engine import make_engine
from backtor.db.migrate import (
    alembic_config,
    current_revisions,
    downgrade_to,
    head_revisions,
    is_at_head,
    upgrade_to_head,
)
from backtor.db.models import Base

pytestmark = pytest.mark.integration

FIRST_TABLES = {"backup_spec", "backup"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_script_directory_has_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    base = [r for r in script.walk_revisions() if r.down_revision is None]
    assert [r.revision for r in base] == ["0001"]


def test_upgrade_to_head_and_down_to_base_on_postgres(postgres_url: str) -> None:
    assert _tables(postgres_url) == set()
    upgrade_to_head(postgres_url)
    engine = make_engine(postgres_url)
    try:
        assert is_at_head(engine)
        inspector = inspect(engine)
        assert FIRST_TABLES | {"alembic_version"} <= set(inspector.get_table_names())
        spec_columns = {c["name"]: c for c in inspector.get_columns("backup_spec")}
        assert spec_columns["next_fire_at"]["type"].timezone is True  # timestamptz
        assert spec_columns["name"]["type"].length == 128
        assert not spec_columns["cron_string"]["nullable"]
        assert {i["name"] for i in inspector.get_indexes("backup_spec")} >= {
            "ix_backup_spec_next_fire_at"
        }
        assert {i["name"] for i in inspector.get_indexes("backup")} >= {"ix_backup_spec_id_status"}
        [fk] = [
            fk
            for fk in inspector.get_foreign_keys("backup")
            if fk["referred_table"] == "backup_spec"
        ]
        assert fk["options"].get("ondelete") == "CASCADE"
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("backup")}
        assert ("backup_task_id",) in uniques
    finally:
        engine.dispose()

    downgrade_to("base", postgres_url)
    assert _tables(postgres_url) <= {"alembic_version"}
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert current_revisions(connection) == frozenset()
        assert not is_at_head(engine)
    finally:
        engine.dispose()

    upgrade_to_head(postgres_url)  # and up again, from base
    assert _tables(postgres_url) >= FIRST_TABLES


# Reflection reads this PostgreSQL expression index as a plain index on `name` (the
# collation is lost), so it is checked by its definition instead.
CODE_POINT_INDEX = "ix_backup_spec_name_c"


def _comparable(
    item: object, name: str | None, kind: str, reflected: bool, compare_to: object
) -> bool:
    return not (kind == "index" and name == CODE_POINT_INDEX)


def test_the_models_match_the_migrations(database_url: str) -> None:
    """What the ORM expects is exactly what the migrations build, on both backends."""
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_object": _comparable}
            )
            assert compare_metadata(context, Base.metadata) == []
            if connection.dialect.name == "postgresql":
                [definition] = connection.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                    {"name": CODE_POINT_INDEX},
                ).scalars()
                assert definition.endswith('(name COLLATE "C")')
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(database_url: str) -> None:
    upgrade_to_head(database_url)
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    try:
        assert is_at_head(engine)
        with engine.connect() as connection:
            assert current_revisions(connection) == head_revisions()
    finally:
        engine.dispose()


def test_backtor_migrate_works_from_any_directory(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_url}
    done = subprocess.run(
        [sys.executable, "-m", "backtor", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert _tables(postgres_url) >= FIRST_TABLES
    assert ":backtor@" not in done.stdout + done.stderr  # the password is masked


def test_backtor_migrate_creates_the_sqlite_default_under_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "there" / "yet"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "backtor", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    database = data_dir / "backtor.db"
    assert database.is_file()
    assert _tables(f"sqlite:///{database}") >= FIRST_TABLES
