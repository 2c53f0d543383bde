"""Session services for the tests: a real Conductor server and a real PostgreSQL.

Where they come from, first match wins:
- CONDUCTOR_API_URL / DATABASE_URL point at servers that already run;
- BACKTOR_TEST_DOCKER=1 (a machine with Docker): testcontainers starts
  conductoross/conductor and postgres;
- otherwise the project's own scripts: scripts/conductor starts the OSS boot jar on
  a free port in a throwaway directory, scripts/postgres makes sure the local server runs.
  The server's persistence is SQLite, or PostgreSQL with `--conductor-backend postgres`
  (or BACKTOR_TEST_CONDUCTOR_BACKEND=postgres): database, queues and index in a fresh
  database of the local PostgreSQL, as clusters run Conductor.
Each test database is a fresh, uniquely named one, so a DATABASE_URL never has its own
data touched.

Every test that needs one of these servers is marked `needs_server` at collection (see
`pytest_collection_modifyitems`), so `scripts/test --fast` (`-m "not needs_server"`) never
waits for a server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from backtor.runtime.settings import normalize_database_url
from tests.support.net import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
CONDUCTOR_IMAGE = os.environ.get("BACKTOR_TEST_CONDUCTOR_IMAGE", "conductoross/conductor:latest")
CONDUCTOR_BACKENDS = ("sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--conductor-backend",
        choices=CONDUCTOR_BACKENDS,
        default=None,
        help="persistence of the Conductor servers the tests start (scripts/conductor "
        "--backend): sqlite (default) or postgres; default $BACKTOR_TEST_CONDUCTOR_BACKEND",
    )


def conductor_backend(config: pytest.Config) -> str:
    """The Conductor backend of this session: the option, else the variable, else sqlite."""
    chosen = config.getoption("--conductor-backend", None) or os.environ.get(
        "BACKTOR_TEST_CONDUCTOR_BACKEND", "sqlite"
    )
    if chosen not in CONDUCTOR_BACKENDS:
        raise pytest.UsageError(
            f"BACKTOR_TEST_CONDUCTOR_BACKEND={chosen!r}: must be one of "
            + ", ".join(CONDUCTOR_BACKENDS)
        )
    return str(chosen)


def pytest_report_header(config: pytest.Config) -> str:
    return f"conductor backend: {conductor_backend(config)}"


# -- which tests need a server ---------------------------------------------------------------

# The fixtures that start or reach a real server; a test whose fixture closure holds one of
# them needs that server.
SERVER_FIXTURES = frozenset(
    {"conductor_url", "postgres_server_url", "make_postgres_database", "postgres_url"}
)
# A parameter that reaches a server through request.getfixturevalue, invisible in the
# closure. By id: a contract test runs on the twin as "twin" (fast) and on the real server
# as "real". By fixture and value: database_url's "postgres" (its "sqlite" needs none).
SERVER_PARAM_IDS = frozenset({"real"})
SERVER_PARAMS: dict[str, tuple[object, ...]] = {"database_url": ("postgres",)}


def needs_server(item: pytest.Item) -> bool:
    """True when `item` may reach a real Conductor or PostgreSQL."""
    if item.get_closest_marker("integration") is not None:
        return True
    if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    if SERVER_PARAM_IDS.intersection(callspec.id.split("-")):
        return True
    return any(
        name in callspec.params and callspec.params[name] in values
        for name, values in SERVER_PARAMS.items()
    )


def pytest_configure(config: pytest.Config) -> None:
    # Tests that start a Conductor of their own (a restart, ...) run scripts/conductor, which
    # reads CONDUCTOR_BACKEND: they get the session's backend too.
    os.environ["CONDUCTOR_BACKEND"] = conductor_backend(config)
    config.addinivalue_line(
        "markers",
        "needs_server: reaches a real Conductor or PostgreSQL (added at collection; "
        "scripts/test --fast leaves these out)",
    )
    if not config.pluginmanager.has_plugin("backtor-server-guard"):
        config.pluginmanager.register(ServerGuard(), "backtor-server-guard")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if needs_server(item):
            item.add_marker(pytest.mark.needs_server)


class ServerGuard:
    """Fails at once a test not marked needs_server that reaches a server fixture.

    The collection rules cannot see every request.getfixturevalue; this catches the rest, so
    such a test errors with a hint instead of starting (or waiting for) a server in the fast
    loop. Registered as a plugin, not left as a conftest hook: pytest asks only the session's
    plugins when it sets up a session-scoped fixture, and conftest hooks are not among them.
    Nothing is cached on failure: a correctly marked test still gets the server.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        if fixturedef.argname not in SERVER_FIXTURES:
            return
        item = getattr(request, "_pyfuncitem", None)  # the test that asked, whatever the scope
        if item is not None and item.get_closest_marker("needs_server") is None:
            pytest.fail(
                f"{item.nodeid} reaches the server fixture {fixturedef.argname!r} but is not "
                "marked needs_server: request it as a fixture argument, give the parameter "
                'that reaches it the id "real", or mark the test integration '
                "(docs/development.md)",
                pytrace=False,
            )


def _docker_wanted() -> bool:
    return os.environ.get("BACKTOR_TEST_DOCKER") == "1"


@pytest.fixture(scope="session")
def conductor_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """Base URL of Conductor's REST API, ending in /api."""
    given = os.environ.get("CONDUCTOR_API_URL")
    if given:
        yield given.rstrip("/")
        return
    if _docker_wanted():
        from testcontainers.core.container import DockerContainer

        with DockerContainer(CONDUCTOR_IMAGE).with_exposed_ports(8080) as container:
            host = container.get_container_host_ip()
            base = f"http://{host}:{container.get_exposed_port(8080)}"
            wait_until_healthy(base, timeout=240)
            yield f"{base}/api"
        return
    workdir = Path(tempfile.mkdtemp(prefix="backtor-conductor-"))
    port = free_port()
    script = str(ROOT / "scripts" / "conductor")
    backend = conductor_backend(pytestconfig)
    subprocess.run(
        [script, "start", "--port", str(port), "--dir", str(workdir), "--backend", backend],
        check=True,
    )
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        # --drop: the PostgreSQL backend's database goes with the directory.
        subprocess.run([script, "stop", "--dir", str(workdir), "--drop"], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[URL]:
    """A PostgreSQL server and a role that may create databases."""
    given = os.environ.get("DATABASE_URL")
    if given and given.startswith(("postgres://", "postgresql")):
        yield make_url(normalize_database_url(given))
        return
    if _docker_wanted():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as pg:
            yield make_url(pg.get_connection_url())
        return
    script = str(ROOT / "scripts" / "postgres")
    subprocess.run([script, "ensure"], check=True)
    url = subprocess.run(
        [script, "url", "backtor_test"], check=True, capture_output=True, text=True
    )
    yield make_url(normalize_database_url(url.stdout.strip()))


@pytest.fixture(scope="session")
def make_postgres_database(postgres_server_url: URL) -> Iterator[Callable[[], str]]:
    """Create fresh, uniquely named databases; drop them all at the end of the session."""
    admin_dsn = postgres_server_url.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    created: list[str] = []

    def run_admin(statement: sql.Composed) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(statement)

    def make() -> str:
        name = f"backtor_t_{uuid.uuid4().hex[:12]}"
        # CREATE DATABASE takes no bind parameters: the name goes in as a quoted identifier.
        run_admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return postgres_server_url.set(database=name).render_as_string(hide_password=False)

    yield make
    for name in created:
        run_admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_url(make_postgres_database: Callable[[], str]) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return make_postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test (the embedded default)."""
    return f"sqlite:///{tmp_path / 'backtor.db'}"


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run a test on both supported databases."""
    fixture = "postgres_url" if request.param == "postgres" else "sqlite_url"
    return str(request.getfixturevalue(fixture))
