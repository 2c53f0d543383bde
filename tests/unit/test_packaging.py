"""The wheel carries what an installed Backtor needs: definitions and migrations."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_definitions_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("-w", str(tmp_path), str(ROOT)),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("backtor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_json = {
        p.relative_to(ROOT / "workflows").as_posix() for p in ROOT.glob("workflows/**/*.json")
    }
    assert shipped_json, "no definitions in workflows/"
    for name in shipped_json:
        assert f"backtor/definitions/{name}" in names
    for migration in (ROOT / "migrations" / "versions").glob("*.py"):
        assert f"backtor/migrations/versions/{migration.name}" in names
    assert "backtor/migrations/env.py" in names
    for module in (ROOT / "backtor").rglob("*.py"):
        if "__pycache__" not in module.parts:
            assert module.relative_to(ROOT).as_posix() in names, f"{module} is not in the wheel"
    assert not any(n.startswith(("api/", "workers/", "tests/")) for n in names)
