"""The layout's import rules (docs/development.md), read from the source with ast.

Reading the source rather than importing it: a rule holds for every import statement,
including those inside functions and under TYPE_CHECKING, whether or not it runs.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "backtor"

# core/ is pure: the standard library (but no HTTP client), croniter (cron arithmetic) and
# core itself. The libraries of the adapters are named so a failure says what is forbidden.
CORE_THIRD_PARTY = frozenset({"croniter"})
NOT_IN_CORE = (
    "sqlalchemy",
    "requests",
    "httpx",
    "fastapi",
    "starlette",
    "pydantic",
    "psycopg",
    "conductor",
    "uvicorn",
    "prometheus_client",
    "alembic",
)

# Talking to Conductor: conductor-python, or an HTTP client. Only backtor/conductor/ may.
CONDUCTOR_SDK = "conductor"
HTTP_CLIENTS = ("requests", "httpx", "urllib3", "aiohttp", "urllib.request", "http.client")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    path: Path
    line: int
    name: str  # the imported module, dotted and absolute

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.name}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[Import]:
    """Every import in the module at `path`."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return imports_in(tree, module, package, path)


def imports_in(tree: ast.AST, module: str, package: str, path: Path) -> Iterator[Import]:
    """Every import statement anywhere in `tree`, relative ones made absolute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            if base == "backtor":  # `from backtor import core`: the subpackage is the target
                for alias in node.names:
                    yield Import(module, path, node.lineno, f"backtor.{alias.name}")
            else:
                yield Import(module, path, node.lineno, base)


def all_imports() -> list[Import]:
    return [
        found
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
        for found in imports_of(path)
    ]


def within(name: str, root: str) -> bool:
    """`name` is the module `root` or inside it."""
    return name == root or name.startswith(f"{root}.")


def allowed_in_core(name: str) -> bool:
    top = name.partition(".")[0]
    if top == "backtor":
        return within(name, "backtor.core")
    if any(within(name, client) for client in HTTP_CLIENTS):
        return False
    return top in sys.stdlib_module_names or top in CORE_THIRD_PARTY


def report(broken: list[Import], rule: str) -> str:
    return f"{rule}:\n" + "\n".join(f"  {found}" for found in broken)


SAMPLE = """
from __future__ import annotations
import os.path
from typing import TYPE_CHECKING
from . import sibling
from ..db import models
from .. import scheduling
if TYPE_CHECKING:
    import sqlalchemy
def later():
    from requests import get
"""


def test_every_kind_of_import_is_seen() -> None:
    """Relative, nested and TYPE_CHECKING imports count; the rules are no weaker than Python."""
    path = PACKAGE / "core" / "sample.py"
    found = {
        i.name for i in imports_in(ast.parse(SAMPLE), "backtor.core.sample", "backtor.core", path)
    }
    assert found == {
        "os.path",
        "typing",
        "backtor.core",
        "backtor.db",
        "backtor.scheduling",
        "sqlalchemy",
        "requests",
    }
    assert {"backtor.core.cron", "backtor.conductor.http"} <= {i.module for i in all_imports()}
    for forbidden in (*NOT_IN_CORE, *HTTP_CLIENTS, "backtor.db", "backtor.scheduling"):
        assert not allowed_in_core(forbidden), forbidden


def test_core_imports_only_the_standard_library_croniter_and_core() -> None:
    broken = [
        found
        for found in all_imports()
        if within(found.module, "backtor.core") and not allowed_in_core(found.name)
    ]
    assert not broken, report(
        broken,
        "backtor/core is pure: the standard library, croniter and backtor.core only "
        f"(never {', '.join(NOT_IN_CORE)}, nor another backtor package)",
    )


def talks_to_conductor(found: Import) -> bool:
    """An import only backtor/conductor may make."""
    if within(found.module, "backtor.conductor"):
        return False
    return any(within(found.name, name) for name in (CONDUCTOR_SDK, *HTTP_CLIENTS))


def test_only_the_conductor_package_talks_to_conductor() -> None:
    broken = [found for found in all_imports() if talks_to_conductor(found)]
    assert not broken, report(
        broken,
        "only backtor/conductor imports conductor-python or an HTTP client (the workers get "
        "the SDK through backtor.conductor.sdk, observability Conductor's health as a callable)",
    )
