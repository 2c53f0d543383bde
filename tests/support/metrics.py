"""/metrics in tests against a real database: samples parsed from the text format, and the
migrated database's engine and sessions as fixtures.

A test module takes the fixtures by naming them at module level (`engine = metrics.engine`,
`sessions = metrics.sessions`), as the e2e modules share the storage stack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from backtor.db.engine import make_engine, make_session_factory
from backtor.db.migrate import upgrade_to_head

# (sample name, its labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The test's database (`database_url`: SQLite or PostgreSQL), migrated to head."""
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)
