"""``sieve status`` without a broker: it fails fast, and says so in either format (issue 12.3).

Before, kafka-python's bootstrap held it for 31.5 s and it exited 0. The bound below is the
issue's requirement (5 s) for the command itself, run in-process; the subprocess test adds
a cold interpreter's start to it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from streams.broker.control import free_ports
from streams.cli import cli
from streams.worker.status import LagUnknownError

REQUIRED_S = 5.0
# A fresh interpreter imports click, rich, pyarrow and the contract first: ~1-2 s when the
# machine is busy.
INTERPRETER_MARGIN_S = 5.0


def _env(tmp_path: Path, bootstrap: str) -> dict[str, str]:
    return {
        "SIEVE_BOOTSTRAP_SERVERS": bootstrap,
        "SIEVE_DATA_ROOT": str(tmp_path / "data"),
        "SIEVE_RAW_TOPIC": "sieve.raw",
    }


@pytest.fixture
def nobody_listens() -> str:
    (port,) = free_ports(1)
    return f"127.0.0.1:{port}"


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel completes them) and never answers:
    a broker that is stopped or hung."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        yield f"127.0.0.1:{listening.getsockname()[1]}"


def _status(tmp_path: Path, bootstrap: str, *args: str) -> tuple[float, Result]:
    began = time.monotonic()
    result = CliRunner().invoke(cli, ["status", *args], env=_env(tmp_path, bootstrap))
    return time.monotonic() - began, result


@pytest.mark.parametrize("broker", ["nobody_listens", "silent_listener"])
def test_status_fails_within_five_seconds_without_a_broker(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    bootstrap = request.getfixturevalue(broker)
    elapsed, result = _status(tmp_path, bootstrap, "--format", "json")
    assert elapsed < REQUIRED_S, f"{elapsed:.1f} s"
    assert isinstance(result.exception, LagUnknownError)
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    # The counts come from the markers and are still reported; the lag is not made up.
    assert document["raw"] == 0 and document["ranges"] == 0
    assert document["lag"] is None
    assert bootstrap in document["lag_error"]


def test_the_table_says_the_lag_is_unknown(tmp_path: Path, nobody_listens: str) -> None:
    elapsed, result = _status(tmp_path, nobody_listens)
    assert elapsed < REQUIRED_S
    assert result.exit_code == 1
    lag_rows = [line for line in result.stdout.splitlines() if " lag " in line]
    assert len(lag_rows) == 1 and "unknown" in lag_rows[0]


def test_the_command_line_exits_1_with_one_line_saying_why(
    tmp_path: Path, nobody_listens: str
) -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "status", "--format", "json"],
        env={**os.environ, **_env(tmp_path, nobody_listens)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - began
    assert elapsed < REQUIRED_S + INTERPRETER_MARGIN_S, f"{elapsed:.1f} s"
    assert done.returncode == 1
    assert json.loads(done.stdout)["lag"] is None
    assert done.stderr.strip().splitlines() == [
        f"sieve: no Kafka broker listens at {nobody_listens}: lag unknown"
    ]
