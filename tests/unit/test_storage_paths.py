"""Allowed roots and safe names: nothing leads out through `..`, links or a dataId path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backtor.core.errors import SettingError
from backtor.runtime.settings import Settings
from backtor.storage.errors import TerminalError
from backtor.storage.paths import (
    AllowedRoots,
    PathNotAllowed,
    check_backup_name,
    check_data_id,
)
from backtor.storage.worker import storage_settings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "store").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


def refused(roots: AllowedRoots, raw: str) -> str:
    with pytest.raises(PathNotAllowed) as caught:
        roots.resolve(raw, "target")
    assert isinstance(caught.value, TerminalError)
    return str(caught.value)


def test_paths_under_a_root_resolve_to_their_real_path(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    assert roots.resolve(str(root), "target") == root.resolve()
    assert roots.resolve(f"{root}/store", "target") == (root / "store").resolve()
    # Missing paths under a root are fine: a target is created on first use.
    assert roots.resolve(f"{root}/new/deeper", "target") == (root / "new" / "deeper").resolve()
    assert roots.resolve(f"{root}//store/./", "target") == (root / "store").resolve()


def test_relative_paths_and_dotdot_are_refused_even_inside(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    assert refused(roots, "store") == "target 'store' must be an absolute path"
    assert "may not contain '..'" in refused(roots, f"{root}/store/../store")
    assert "may not contain '..'" in refused(roots, f"{root}/../outside")


def test_paths_outside_every_root_are_refused_naming_the_roots(root: Path) -> None:
    roots = AllowedRoots.from_paths([str(root)])
    message = refused(roots, str(root.parent / "outside"))
    assert "is outside the storage worker's allowed roots" in message
    assert str(root.resolve()) in message
    refused(roots, "/etc")
    # A sibling sharing the root's name as a prefix is not under it.
    (root.parent / "root2").mkdir()
    refused(roots, str(root.parent / "root2"))


def test_a_link_leading_out_of_the_root_is_refused(root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "outside")
    (root / "hop").symlink_to("escape/../..")
    roots = AllowedRoots.from_paths([str(root)])
    message = refused(roots, f"{root}/escape")
    assert f"(really {(root.parent / 'outside').resolve()})" in message
    refused(roots, f"{root}/escape/sub")
    refused(roots, f"{root}/hop")


def test_a_link_staying_inside_the_root_is_followed(root: Path) -> None:
    (root / "current").symlink_to("store")
    roots = AllowedRoots.from_paths([str(root)])
    assert roots.resolve(f"{root}/current", "target") == (root / "store").resolve()


def test_roots_are_resolved_checked_and_deduplicated(root: Path) -> None:
    link = root.parent / "root-link"
    link.symlink_to(root)
    roots = AllowedRoots.from_paths([str(root), str(link), f"{root}/"])
    assert roots.paths == (root.resolve(),)
    # The operator's link to a root is followed once, at start.
    assert roots.resolve(f"{link}/store", "target") == (root / "store").resolve()
    with pytest.raises(ValueError, match="is not an existing directory"):
        AllowedRoots.from_paths([str(root / "missing")])
    with pytest.raises(ValueError, match="file system's root"):
        AllowedRoots.from_paths(["/"])
    with pytest.raises(ValueError, match="no allowed roots"):
        AllowedRoots.from_paths([])


def test_roots_come_from_the_options_else_the_environment(tmp_path: Path) -> None:
    a, b, x = (tmp_path / n for n in ("a", "b", "x"))
    for directory in (a, b, x):
        directory.mkdir()
    env = {"BACKTOR_STORAGE_ROOTS": f"{a}{os.pathsep}{b}{os.pathsep}"}
    from_env = Settings.from_env(env).storage_roots
    assert from_env == (str(a), str(b))
    assert Settings.from_env({}).storage_roots == ()
    assert storage_settings(["filesystem"], [str(x)], from_env).roots.paths == (x.resolve(),)
    assert storage_settings(["filesystem"], [], from_env).roots.paths == (a.resolve(), b.resolve())
    with pytest.raises(ValueError, match="no allowed roots"):
        storage_settings(["filesystem"], [], ())


def test_a_bad_root_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    roots = Settings.from_env({"BACKTOR_STORAGE_ROOTS": missing}).storage_roots
    with pytest.raises(SettingError) as caught:
        storage_settings(["filesystem"], [], roots)
    assert caught.value.variable == "BACKTOR_STORAGE_ROOTS"
    assert str(caught.value).startswith(f"BACKTOR_STORAGE_ROOTS={missing!r}: allowed root")
    # Given on the command line, the same root is the command line's fault, not a setting's.
    with pytest.raises(ValueError, match="is not an existing directory") as plain:
        storage_settings(["filesystem"], [missing], ())
    assert not isinstance(plain.value, SettingError)


@pytest.mark.parametrize(
    ("data_id", "phrase"),
    [
        ("sub/a.tar.gz", "must be a plain file name, not a path"),
        ("../a.tar.gz", "must be a plain file name, not a path"),
        ("/etc/passwd", "must be a plain file name, not a path"),
        ("a\\b.tar.gz", "must be a plain file name, not a path"),
        ("a\x00.tar.gz", "must be a plain file name, not a path"),
        (".a.tar.gz.1234.partial", "may not start with '.'"),
        ("..", "may not start with '.'"),
        ("notes.txt", "is not a backup of this kind (*.tar.gz)"),
        (".tar.gz", "may not start with '.'"),
        ("", "dataId is missing"),
        (None, "dataId is missing"),
        (12, "dataId is missing"),
    ],
)
def test_bad_data_ids_are_refused(data_id: object, phrase: str) -> None:
    with pytest.raises(TerminalError) as caught:
        check_data_id(data_id, ".tar.gz")
    assert phrase in str(caught.value)


def test_a_backup_file_name_is_a_data_id() -> None:
    assert check_data_id("demo-20260101T000000Z-ab12cd34.tar.gz", ".tar.gz")
    assert check_data_id("db-20260101T000000Z-ab12cd34.dump", ".dump")


def test_backup_names_are_spec_names() -> None:
    assert check_backup_name("orders-db.v2_x") == "orders-db.v2_x"
    for bad in ("", "../x", "a/b", "-x", None, "x" * 129):
        with pytest.raises(TerminalError, match="is not a valid spec name"):
            check_backup_name(bad)
