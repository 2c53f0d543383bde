"""One Settings: every variable read in one place, checked at start, documented in one table."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backtor.core.errors import SettingError
from backtor.runtime import cli
from backtor.runtime.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"

# Read by scripts/run (`make run`) only, never by Python; documented in the same table.
SCRIPT_ONLY = {"BACKTOR_DEMO", "CONDUCTOR_PORT"}

# The one module that builds a child's environment from the worker's own: pg_dump needs
# PATH, locale and the operator's PG* variables (not configuration of Backtor's).
CHILD_ENVIRONMENT = {"backtor/storage/postgres.py"}

# Taken as given, nothing to refuse; every other variable has bad values below.
FREE_TEXT = {
    "DATA_DIR",
    "BACKTOR_API_TOKEN",
    "HOST",
    "BACKTOR_WORKER_HEALTH_HOST",
    "BACKTOR_STORAGE_ROOTS",
    "CONDUCTOR_AUTH_KEY",
    "CONDUCTOR_AUTH_SECRET",
    "BACKTOR_NOTIFY_SECRET",
    "CONDUCTOR_WORKER_ALL_WORKER_ID",
}

BAD_VALUES = [
    ("CONDUCTOR_AUTH_REFRESH_MINUTES", "0"),
    ("CONDUCTOR_AUTH_REFRESH_MINUTES", "soon"),
    ("CONDUCTOR_AUTH_HEADER", "X-Api-Key:"),
    ("CONDUCTOR_API_URL", "localhost:8080/api"),
    ("CONDUCTOR_API_URL", "/"),
    ("CONDUCTOR_API_URL", "   "),
    ("CONDUCTOR_UI_URL", "conductor.example:5000"),
    ("DATABASE_URL", "backtor.db"),
    ("DATABASE_URL", "  "),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "critical"),
    ("LOG_FORMAT", "xml"),
    ("BACKTOR_MAX_REMOVALS_PER_RUN", "abc"),
    ("BACKTOR_MAX_REMOVALS_PER_RUN", "0"),
    ("BACKTOR_MAX_REMOVALS_PER_RUN", "-3"),
    ("BACKTOR_MAX_REMOVALS_PER_RUN", "2.5"),
    ("BACKTOR_REMOVAL_RETRY_SECONDS", "soon"),
    ("BACKTOR_REMOVAL_RETRY_SECONDS", "0"),
    ("BACKTOR_REMOVAL_RETRY_SECONDS", "-1"),
    ("BACKTOR_REMOVAL_RETRY_SECONDS", "nan"),
    ("BACKTOR_REMOVAL_RETRY_SECONDS", "inf"),
    ("BACKTOR_TICK_SHARDS", "0"),
    ("BACKTOR_TICK_SHARDS", "65"),
    ("BACKTOR_TICK_SHARDS", "two"),
    ("BACKTOR_JITTER_SECONDS", "-1"),
    ("BACKTOR_JITTER_SECONDS", "86401"),
    ("BACKTOR_JITTER_SECONDS", "1.5"),
    ("BACKTOR_JITTER_SECONDS", "a minute"),
    ("BACKTOR_VERIFY_SAMPLE_RATE", "-0.1"),
    ("BACKTOR_VERIFY_SAMPLE_RATE", "1.01"),
    ("BACKTOR_VERIFY_SAMPLE_RATE", "nan"),
    ("BACKTOR_VERIFY_SAMPLE_RATE", "10%"),
    ("PORT", "http"),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "-1"),
    ("BACKTOR_WORKER_HEALTH_PORT", "x"),
    ("BACKTOR_WORKER_HEALTH_PORT", "70000"),
    ("BACKTOR_WORKER_HEALTH_PORT", "-1"),
    ("BACKTOR_MIGRATE_ON_START", "yes"),
    ("BACKTOR_MIGRATE_ON_START", "2"),
    ("BACKTOR_NOTIFY_URL", "ftp://hooks.example/backtor"),
    ("BACKTOR_NOTIFY_URL", "hooks.example/backtor"),
    ("BACKTOR_METRICS_MODE", "fleet"),
    ("BACKTOR_METRICS_MODE", "per_spec"),
    ("BACKTOR_METRICS_MODE", "aggregate"),
    ("BACKTOR_WORKER_ISOLATION", "threads"),
    ("BACKTOR_WORKER_ISOLATION", "fork"),
    ("BACKTOR_WORKER_ISOLATION", "none"),
]


def documented_rows() -> dict[str, str]:
    """The configuration table's rows by variable (the first cell, in backquotes)."""
    rows: dict[str, str] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", line)
        if found:
            assert found.group(1) not in rows, f"{found.group(1)} has two rows"
            rows[found.group(1)] = line
    return rows


# -- (1) the code's table and the documentation's agree ----------------------------------


def test_every_settings_field_is_filled_by_exactly_one_variable() -> None:
    fields = [v.field for v in VARIABLES]
    assert sorted(fields) == sorted(f.name for f in dataclasses.fields(Settings))
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)


def test_every_variable_is_documented_with_its_default() -> None:
    rows = documented_rows()
    for variable in VARIABLES:
        assert variable.name in rows, f"{variable.name} is missing from {DOCS.name}"
        if variable.default:
            assert f"`{variable.default}`" in rows[variable.name], (
                f"{variable.name}: the default {variable.default!r} is not in its row"
            )
    # Nothing documented that nobody reads.
    assert set(rows) == {v.name for v in VARIABLES} | SCRIPT_ONLY
    run = (ROOT / "scripts" / "run").read_text(encoding="utf-8")
    for name in SCRIPT_ONLY:
        assert f"${{{name}" in run, f"scripts/run no longer reads {name}"


def test_the_readme_points_to_the_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert "docs/configuration.md" in section


def test_constructor_defaults_match_the_environment_defaults() -> None:
    """Callers that build Settings by hand get what an empty environment gives."""
    read = Settings.from_env({})
    for field in dataclasses.fields(Settings):
        if field.default is not dataclasses.MISSING:
            assert getattr(read, field.name) == field.default, field.name


# -- (2) no other module reads the environment --------------------------------------------


def environment_readers(path: Path) -> list[int]:
    """Lines naming os.environ, getenv and friends (code only: comments and text ignored)."""
    names = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [t.start[0] for t in tokens if t.type == tokenize.NAME and t.string in names]


def test_only_settings_reads_the_environment() -> None:
    readers = {
        path.relative_to(ROOT).as_posix(): lines
        for base in ("backtor", "migrations")
        for path in sorted((ROOT / base).rglob("*.py"))
        if (lines := environment_readers(path))
    }
    allowed = {"backtor/runtime/settings.py"} | CHILD_ENVIRONMENT
    assert set(readers) == allowed, {k: v for k, v in readers.items() if k not in allowed}


# -- (3) values -------------------------------------------------------------------------


def test_defaults() -> None:
    settings = Settings.from_env({})
    data_dir = Path("./data").resolve()
    assert settings == Settings(
        conductor_api_url="http://localhost:8080/api",
        database_url=f"sqlite:///{data_dir / 'backtor.db'}",
        data_dir=data_dir,
        log_level="INFO",
        log_format="text",
        api_token=None,
        max_removals_per_run=20,
        removal_retry_seconds=30.0,
        api_host="0.0.0.0",
        api_port=6000,
        migrate_on_start=False,
        worker_health_host="0.0.0.0",
        worker_health_port=6001,
        storage_roots=(),
    )
    # Empty is unset: `PORT=` in a compose file means the default.
    assert Settings.from_env({v.name: "" for v in VARIABLES}) == settings


def test_good_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "CONDUCTOR_API_URL": "https://conductor.example/api/",
            "DATABASE_URL": "postgres://u:p@db:5432/b",
            "DATA_DIR": "/srv/backtor",
            "LOG_LEVEL": "Warning",
            "LOG_FORMAT": "JSON",
            "BACKTOR_API_TOKEN": "t0ken",
            "BACKTOR_MAX_REMOVALS_PER_RUN": "5",
            "BACKTOR_REMOVAL_RETRY_SECONDS": "0.5",
            "HOST": "127.0.0.1",
            "PORT": "65535",
            "BACKTOR_MIGRATE_ON_START": "1",
            "BACKTOR_WORKER_HEALTH_HOST": "::1",
            "BACKTOR_WORKER_HEALTH_PORT": "0",
            "BACKTOR_STORAGE_ROOTS": "/a::/b",
            "BACKTOR_JITTER_SECONDS": "86400",
            "BACKTOR_VERIFY_SAMPLE_RATE": "0.25",
            "BACKTOR_METRICS_MODE": " Aggregated ",
            "BACKTOR_WORKER_ISOLATION": "Process",
            "CONDUCTOR_WORKER_ALL_WORKER_ID": "replica-1",
            "BACKTOR_TICK_SHARDS": "64",
        }
    )
    assert settings.conductor_api_url == "https://conductor.example/api"
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/b"
    assert settings.data_dir == Path("/srv/backtor")
    assert (settings.log_level, settings.log_format) == ("WARNING", "json")
    assert settings.api_token == "t0ken"
    assert (settings.max_removals_per_run, settings.removal_retry_seconds) == (5, 0.5)
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 65535)
    assert settings.migrate_on_start is True
    assert (settings.worker_health_host, settings.worker_health_port) == ("::1", 0)
    assert settings.storage_roots == ("/a", "/b")
    assert settings.jitter_seconds == 86_400
    assert settings.verify_sample_rate == 0.25
    assert settings.metrics_mode == "aggregated"
    assert (settings.worker_isolation, settings.worker_id) == ("process", "replica-1")
    assert settings.tick_shards == 64


@pytest.mark.parametrize(
    ("text", "on"), [("1", True), ("true", True), ("TRUE", True), ("0", False), ("false", False)]
)
def test_migrate_on_start_takes_0_1_true_false(text: str, on: bool) -> None:
    assert Settings.from_env({"BACKTOR_MIGRATE_ON_START": text}).migrate_on_start is on


def test_every_checked_variable_has_bad_values() -> None:
    assert {name for name, _ in BAD_VALUES} | FREE_TEXT == {v.name for v in VARIABLES}


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_value_names_the_variable_and_the_value(variable: str, value: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert caught.value.value == value
    assert str(caught.value).startswith(f"{variable}={value!r}: ")


@pytest.mark.parametrize(
    "url", ["backtor:s3cret@db/backtor", "host=db user=backtor password=s3cret dbname=backtor"]
)
def test_a_bad_database_url_is_reported_without_its_password(url: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"DATABASE_URL": url})
    assert caught.value.variable == "DATABASE_URL"
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


# -- (4) the command line ------------------------------------------------------------------


def refuse_to_start(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("started despite a bad setting")


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Should a command get past its settings, it fails here instead of serving for ever."""
    import alembic.command
    import uvicorn

    import backtor.conductor.registration
    import backtor.storage.worker
    import backtor.workers.runner

    monkeypatch.setattr(uvicorn, "run", refuse_to_start)
    monkeypatch.setattr(alembic.command, "upgrade", refuse_to_start)
    monkeypatch.setattr(subprocess, "Popen", refuse_to_start)  # `backtor run`'s children
    monkeypatch.setattr(backtor.workers.runner, "run_worker", refuse_to_start)
    monkeypatch.setattr(backtor.storage.worker, "run_storage_worker", refuse_to_start)
    monkeypatch.setattr(backtor.conductor.registration, "register_definitions", refuse_to_start)
    for variable in VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    yield


@pytest.mark.parametrize(
    ("argv", "variable", "value", "why"),
    [
        (["api"], "PORT", "http", "must be a port number, 1 to 65535"),
        (["api"], "BACKTOR_METRICS_MODE", "fleet", "must be one of per-spec, aggregated"),
        (["worker"], "BACKTOR_WORKER_ISOLATION", "fork", "must be one of thread, process"),
        (["run"], "BACKTOR_WORKER_ISOLATION", "threads", "must be one of thread, process"),
        (["api", "--port", "6000"], "BACKTOR_MIGRATE_ON_START", "yes", "must be 1 or 0"),
        (["worker"], "BACKTOR_MAX_REMOVALS_PER_RUN", "abc", "must be a whole number"),
        (
            ["worker"],
            "BACKTOR_WORKER_HEALTH_PORT",
            "70000",
            "must be a port number, 1 to 65535, or 0",
        ),
        (["run"], "LOG_LEVEL", "loud", "must be one of debug, info, warning, error"),
        (["migrate"], "DATABASE_URL", "nowhere", "must be a database URL"),
        (["register"], "CONDUCTOR_API_URL", "conductor:8080", "must be an http://"),
        (["storage-worker", "filesystem"], "LOG_FORMAT", "xml", "must be one of text, json"),
        (
            ["storage-worker", "filesystem"],
            "BACKTOR_STORAGE_ROOTS",
            "/no/such/backtor/root",
            "allowed root /no/such/backtor/root is not an existing directory",
        ),
    ],
)
@pytest.mark.usefixtures("nothing_starts")
def test_the_command_exits_2_naming_the_setting(
    argv: list[str],
    variable: str,
    value: str,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"backtor {argv[0]}: {variable}={value!r}: {why}")
    assert err.count("\n") == 1, err  # one line, no traceback
