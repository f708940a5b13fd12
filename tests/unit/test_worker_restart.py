"""A worker restarting itself (exec, same pid) stops cleanly on SIGTERM at any moment.

The worker execs itself when the broker went away while faust started
(streams.worker.run.restart_in_place). The new interpreter takes a second or more to import
before it installs its SIGTERM handler; a stop landing then used to kill it by the signal
(exit -15, which a supervisor reads as a crash). The test holds the new process inside that
window (it waits for a file before installing the handler), sends SIGTERM there, then lets
it go on: it must exit 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

RESTARTED = """
import pathlib, sys, time
started, go_on = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
started.touch()
deadline = time.monotonic() + 30
while not go_on.exists():  # the new interpreter, still importing
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.01)
from streams.worker.run import stop_cleanly_on_sigterm
stop_cleanly_on_sigterm()
time.sleep(30)  # waiting for its broker; the held-back SIGTERM ends this
sys.exit(4)
"""

RESTARTING = """
import sys
from streams.worker.run import restart_in_place
restart_in_place([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
"""


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_a_sigterm_while_the_restarted_worker_starts_is_a_clean_exit(tmp_path: Path) -> None:
    started, go_on = tmp_path / "started", tmp_path / "go-on"
    process = subprocess.Popen(
        [sys.executable, "-c", RESTARTING, RESTARTED, str(started), str(go_on)]
    )
    try:
        _wait_for(started, process)  # exec'd: the new interpreter runs, no handler yet
        process.send_signal(signal.SIGTERM)
        go_on.touch()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
