"""workerConfig parsing: what a storage worker accepts, and the messages it refuses with."""

from __future__ import annotations

import json

import pytest

from backtor.storage.errors import TerminalError
from backtor.storage.worker_config import (
    ConfigError,
    FilesystemConfig,
    PostgresConfig,
    check_served,
    mask,
    parse_worker_config,
)

DSN = "postgresql://alice:s3cret-pw@db.example:5433/orders?sslmode=require"


def refused(raw: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_worker_config(raw)
    assert isinstance(caught.value, TerminalError)
    return str(caught.value)


def test_filesystem_config() -> None:
    raw = json.dumps({"kind": "filesystem", "source": "/srv/data", "target": "/backups"})
    assert parse_worker_config(raw) == FilesystemConfig(source="/srv/data", target="/backups")


def test_a_json_object_handed_over_as_is_is_accepted() -> None:
    raw = {"kind": "filesystem", "source": "/a", "target": "/b"}
    assert parse_worker_config(raw) == FilesystemConfig(source="/a", target="/b")


def test_postgres_config_keeps_the_password_out_of_the_command_line_and_repr() -> None:
    config = parse_worker_config(json.dumps({"kind": "postgres", "dsn": DSN, "target": "/b"}))
    assert isinstance(config, PostgresConfig)
    assert config.password() == "s3cret-pw"
    conninfo = config.conninfo_without_password()
    assert "s3cret" not in conninfo
    assert "host=db.example" in conninfo and "port=5433" in conninfo
    assert "dbname=orders" in conninfo and "sslmode=require" in conninfo
    assert "s3cret" not in repr(config)
    assert config.describe() == "alice@db.example:5433/orders"
    assert config.secrets() == (DSN, "s3cret-pw")


def test_postgres_key_value_dsn_without_password() -> None:
    config = parse_worker_config(
        json.dumps({"kind": "postgres", "dsn": "host=/run/pg dbname=app", "target": "/b"})
    )
    assert isinstance(config, PostgresConfig)
    assert config.password() is None
    assert config.describe() == "/run/pg:5432/app"


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        ('{"kind": "filesystem",', "workerConfig is not valid JSON (Expecting"),
        ("", "workerConfig is empty"),
        (None, "workerConfig is missing"),
        (42, "must be a JSON object string, got int"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ('"filesystem"', "must be a JSON object, got a string"),
        ('{"source": "/a", "target": "/b"}', 'has no "kind" (one of: filesystem, postgres)'),
        ('{"kind": "s3", "bucket": "x"}', 'kind "s3" is unknown (known kinds: filesystem'),
        ('{"kind": 7}', "kind 7 is unknown"),
        (
            '{"kind": "filesystem", "source": "/a", "traget": "/b"}',
            'unknown field(s) "traget" for kind filesystem (allowed: kind, source, target)',
        ),
        ('{"kind": "filesystem", "target": "/b"}', 'kind filesystem needs "source"'),
        ('{"kind": "filesystem", "source": " ", "target": "/b"}', 'needs "source"'),
        ('{"kind": "filesystem", "source": ["/a"], "target": "/b"}', 'needs "source"'),
        ('{"kind": "filesystem", "source": "/a\\u0000", "target": "/b"}', "NUL character"),
        ('{"kind": "postgres", "target": "/b"}', 'kind postgres needs "dsn"'),
        (
            '{"kind": "postgres", "dsn": "host=h passwrd=x", "target": "/b"}',
            'not a valid PostgreSQL URI or key=value string: invalid connection option "passwrd"',
        ),
    ],
)
def test_refusals_say_what_to_fix(raw: object, phrase: str) -> None:
    assert phrase in refused(raw)


@pytest.mark.parametrize(
    "dsn",
    ["mysql://root:hunter2-x@h/db", "hunter2-x", "postgresql://u:hunter2-x@h:notaport/db"],
)
def test_a_bad_dsn_is_refused_without_quoting_it(dsn: str) -> None:
    message = refused(json.dumps({"kind": "postgres", "dsn": dsn, "target": "/b"}))
    assert "dsn" in message
    assert "hunter2" not in message


def test_a_kind_this_worker_does_not_serve_names_the_ones_it_does() -> None:
    config = FilesystemConfig(source="/a", target="/b")
    check_served(config, ("filesystem", "postgres"))
    with pytest.raises(ConfigError) as caught:
        check_served(config, ("postgres",))
    assert str(caught.value) == (
        "workerConfig kind filesystem is not served by this storage worker (it serves: "
        "postgres); run one with --kind filesystem"
    )


def test_mask_replaces_the_longest_secret_first() -> None:
    text = f"cannot connect to {DSN} with s3cret-pw"
    assert mask(text, (DSN, "s3cret-pw", "")) == "cannot connect to *** with ***"
    assert mask("nothing to hide", ()) == "nothing to hide"
