"""A worker restarting itself (exec, same pid) stops cleanly on SIGTERM at any moment.

The worker execs itself when the broker went away while faust started
(streams.worker.run.restart_in_place). The new interpreter takes a second or more to import
before it installs its SIGTERM handler; a stop landing then used to kill it by the signal
(exit -15, which a supervisor reads as a crash). The test holds the new process inside that
window (it waits for a file before installing the handler), sends SIGTERM there, then lets
it go on: it must exit 0.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_waiting_for_the_broker_logs_its_start_and_end_not_each_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before a self-restart the worker waits with faust's logging in place: kafka-python
    logged each refused connection and each backoff (about four lines a second of outage)."""
    from kafka.errors import KafkaError

    from streams.broker.control import free_ports
    from streams.errors import TransientError
    from streams.kafka_clients import admin_client
    from streams.worker.startup import wait_for_broker

    nobody_listens = free_ports(1)[0]
    attempts: list[int] = []

    def attempt() -> str:
        attempts.append(1)
        if len(attempts) == 3:
            return "answered"
        try:
            admin_client(
                bootstrap_servers=f"127.0.0.1:{nobody_listens}", bootstrap_timeout_ms=1_000
            )
        except KafkaError as away:
            raise TransientError(f"no broker ({type(away).__name__})") from away
        raise AssertionError("a broker answered on a port nobody listens on")

    reported: list[str] = []
    with caplog.at_level(logging.DEBUG):  # as verbose as faust's --loglevel debug
        result = wait_for_broker(
            attempt, what="Kafka", report=reported.append, sleep=lambda _s: None
        )

    assert result == "answered" and len(attempts) == 3
    assert len(reported) == 2  # waiting, then answered
    from_kafka_python = [r for r in caplog.records if r.name.split(".")[0] == "kafka"]
    assert from_kafka_python == []
    assert logging.getLogger("kafka").level == logging.NOTSET  # put back after the wait


def test_the_stop_watchdog_exits_with_1_after_a_failed_stop_and_never_once_cancelled() -> None:
    import threading

    from streams.worker.stop_watchdog import exit_if_stop_hangs

    codes: list[int] = []
    exited = threading.Event()

    def exit_process(code: int) -> None:
        codes.append(code)
        exited.set()

    exit_if_stop_hangs(clean=False, grace_s=0.01, exit_process=exit_process)
    assert exited.wait(10)
    cancelled = exit_if_stop_hangs(clean=True, grace_s=0.5, exit_process=exit_process)
    cancelled.cancel()
    cancelled.join(10)
    assert codes == [1]
