"""`backtor run`: the API and the worker as two child processes, stopped together.

Two processes, not two threads: the worker's conductor-python switches multiprocessing to
"spawn" and runs its own processes; the API stays a plain uvicorn server.

Nothing is restarted: a child that exits ends the run. A child that exits with status 2
refused to start (a bad setting, or credentials Conductor refused): starting it again would
only fail again, so the run stops at once and says which child and why, with status 2.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

from backtor.runtime.settings import Settings
from backtor.runtime.startup import prepare_database

log = logging.getLogger(__name__)

# The status `backtor` commands exit with when a setting (or a credential) is refused.
REFUSED_TO_START = 2


def run_together(host: str | None, port: int | None) -> int:
    """Start both children and wait; SettingError first, so a bad value starts nothing.

    The database is migrated here, once, before either child starts (each would do it
    too, under the same lock; this keeps one migration log and one failure message).
    """
    settings = Settings.from_env()  # the children read the same environment: fail here, once
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    prepare_database(settings)
    api = [sys.executable, "-m", "backtor.runtime.cli", "api"]
    if host:
        api += ["--host", host]
    if port:
        api += ["--port", str(port)]
    children = {
        "api": subprocess.Popen(api),
        "worker": subprocess.Popen([sys.executable, "-m", "backtor.runtime.cli", "worker"]),
    }
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while not stopping:
        for name, child in children.items():
            code = child.poll()
            if code is None:
                continue
            status = code or 1
            stopping = True
            if code == REFUSED_TO_START:
                log.error(
                    "backtor %s refused to start (status 2: a bad setting or credentials "
                    "Conductor refused; its message is above); not restarting it, stopping "
                    "the rest: fix the setting, then run `backtor run` again",
                    name,
                )
            else:
                log.error("backtor %s exited with status %s; stopping the rest", name, code)
            break
        if not stopping:
            time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return status
