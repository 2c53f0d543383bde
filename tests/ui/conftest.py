"""The /ui tests' world: one seeded SQLite database served twice (open, and with a token),
and one headless Chromium for the session.

No Conductor and no PostgreSQL: these tests run in the fast loop. Chromium comes from
Debian's package (scripts/test-tools); a test that needs it fails, never skips, when it is
missing, as the promtool tests do.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head
from backtor.db.types import utc_now
from backtor.runtime.settings import Settings
from tests.support.net import free_port
from tests.ui.chromium import Browser, chromium_binary
from tests.ui.seed import Clock, Seeded, Seeder, seed_all
from tests.ui.server import serve

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "ui-screenshots"  # build/ is gitignored
CONDUCTOR_UI = "http://conductor.example:5000"
TOKEN = "ui-s3cret-token-\u00e9"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_chromium: drives headless Chromium (Debian's chromium, scripts/test-tools); "
        "needs no Conductor or PostgreSQL, so it runs in the fast loop",
    )


@dataclass(frozen=True)
class UiWorld:
    open_url: str  # the API without a token
    secured_url: str  # the same database behind BACKTOR_API_TOKEN
    token: str
    conductor_ui: str
    clock: Clock
    seeded: Seeded
    sessions: sessionmaker[Session]


@pytest.fixture(scope="session")
def ui_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    database = f"sqlite:///{tmp_path_factory.mktemp('ui-db') / 'backtor.db'}"
    upgrade_to_head(database)
    # The pages are looked at 20 s past a minute: the demo's next fire is 40 s away.
    view = utc_now().replace(second=20, microsecond=0)
    clock = Clock(view - timedelta(days=400))
    env = {
        "DATABASE_URL": database,
        "CONDUCTOR_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
        "CONDUCTOR_UI_URL": CONDUCTOR_UI + "/",  # a trailing slash is dropped
    }
    engine = make_engine(database)
    sessions = make_session_factory(engine)
    with (
        serve(Settings.from_env(env), clock) as open_url,
        serve(Settings.from_env({**env, "BACKTOR_API_TOKEN": TOKEN}), clock) as secured_url,
    ):
        seeded = seed_all(Seeder(open_url, clock, sessions), view)
        yield UiWorld(open_url, secured_url, TOKEN, CONDUCTOR_UI, clock, seeded, sessions)
    engine.dispose()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.fail(
            "chromium is missing: run scripts/test-tools (Debian's chromium package)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("chromium")
    started = Browser(binary, workdir / "profile", workdir / "chromium.log")
    yield started
    started.close()


Screenshot = Callable[[Path, str], Path]


@pytest.fixture
def keep_screenshot() -> Screenshot:
    """Copy a screenshot from the test's tmp dir to build/ui-screenshots/ (the artifact)."""

    def keep(path: Path, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / name
        shutil.copyfile(path, target)
        return target

    return keep
