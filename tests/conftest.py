"""Session services for the tests: a real Conductor server and a real PostgreSQL.

Where they come from, first match wins:
- CONDUCTOR_API_URL / DATABASE_URL point at servers that already run;
- BACKTOR_TEST_DOCKER=1 (a machine with Docker): testcontainers starts
  conductoross/conductor and postgres;
- otherwise the project's own scripts: scripts/conductor starts the OSS boot jar on
  a free port in a throwaway directory, scripts/postgres makes sure the local server runs.
Each test database is a fresh, uniquely named one, so a DATABASE_URL never has its own
data touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from backtor.runtime.settings import normalize_database_url
from tests.support.net import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
CONDUCTOR_IMAGE = os.environ.get("BACKTOR_TEST_CONDUCTOR_IMAGE", "conductoross/conductor:latest")


def _docker_wanted() -> bool:
    return os.environ.get("BACKTOR_TEST_DOCKER") == "1"


@pytest.fixture(scope="session")
def conductor_url() -> Iterator[str]:
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
    subprocess.run([script, "start", "--port", str(port), "--dir", str(workdir)], check=True)
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        subprocess.run([script, "stop", "--dir", str(workdir)], check=False)
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
