"""``kill -9`` of sweeps and erasures mid-rewrite, then one complete erasure: nothing left.

Issue 14, item 7. The real ``sieve`` command runs in a subprocess on a local data root (no
broker: ``--no-dead-letters``); a run is killed either at a chosen point (a hook that sends
SIGKILL to its own process right after the temporary copy is synced, before the rename)
or after a random delay. Then a complete erasure of the person, and every byte under
``identifiable/`` is checked: no temporary file, and none of the person's rows anywhere.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring, write_new_keyring
from tests.fixtures.identifiable import record, write_identifiable

NOW = datetime(2024, 4, 15, tzinfo=UTC)
DAY = datetime(2024, 4, 1, 9, tzinfo=UTC)
FILES = 24
ROWS_PER_FILE = 1_500
SEED = 14_7  # issue 14, item 7: the random kill points are reproducible
RANDOM_KILLS = 6
RUN_TIMEOUT_S = 120.0

# Runs a `sieve` command whose rewrites SIGKILL the process after the N-th synced copy.
_KILL_AFTER_SYNC = """
import os, signal, sys
from streams import storage
from streams.cli import main

after = int(os.environ["KILL_AFTER_SYNCS"])
real_sync = storage.sync_file
synced = []

def sync_then_die(filesystem, path):
    real_sync(filesystem, path)
    synced.append(path)
    if len(synced) >= after:
        os.kill(os.getpid(), signal.SIGKILL)

storage.sync_file = sync_then_die
sys.argv = ["sieve", *sys.argv[1:]]
main()
"""


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, str], ParquetEncryption]:
    keyring_file = tmp_path / "keys.json"
    write_new_keyring(keyring_file)
    encryption = ParquetEncryption(*Keyring.load(keyring_file).encryption_keys())
    root = tmp_path / "data"
    # Every file holds the person, a colleague and other accounts; half the rows of each
    # file have expired at NOW, so every sweep rewrites every file.
    for number in range(FILES):
        rows = []
        for i in range(ROWS_PER_FILE):
            user = ("user-1", "user-2", "user-3")[i % 3]
            expired = i % 2 == 0
            rows.append(
                record(
                    f"{number}-{i}",
                    occurred_at=DAY,
                    user_id=user,
                    account_id="acct-1" if i % 5 else "acct-2",
                    expires_at=NOW - timedelta(days=1) if expired else NOW + timedelta(days=9),
                    source_offset=i,
                )
            )
        first = number * ROWS_PER_FILE
        stem = f"sieve.raw+0+{first}-{first + ROWS_PER_FILE - 1}"
        write_identifiable(root, rows, encryption, stem=stem)
    env = {
        **os.environ,
        "SIEVE_DATA_ROOT": str(root),
        "SIEVE_KEYRING_FILE": str(keyring_file),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return root, env, encryption


def _person_rows_anywhere(root: Path, encryption: ParquetEncryption) -> tuple[int, list[str]]:
    """The person's rows in every file under identifiable/ (temporary ones included, which
    must not exist at all); and the names of the temporary files found."""
    rows_found = 0
    temporary = []
    for path in sorted((root / "identifiable").rglob("*")):
        if not path.is_file():
            continue
        if ".tmp-" in path.name:
            temporary.append(path.name)
            continue
        rows = pq.ParquetFile(
            str(path), decryption_properties=encryption.decryption_properties()
        ).read(columns=["account_id", "user_id"])
        pairs = zip(rows["account_id"].to_pylist(), rows["user_id"].to_pylist(), strict=True)
        rows_found += sum(1 for pair in pairs if pair == ("acct-1", "user-1"))
    return rows_found, temporary


def _sieve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _killed_at_sync(env: dict[str, str], syncs: int, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_SYNC, *args],
        env={**env, "KILL_AFTER_SYNCS": str(syncs)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def _killed_after(env: dict[str, str], delay_s: float, *args: str) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    return process.wait(timeout=RUN_TIMEOUT_S)


SWEEP = ("retention", "sweep", "--now", NOW.date().isoformat())
ERASE_COLLEAGUE = ("subject", "erase", "acct-1", "--user", "user-2", "--yes", "--no-dead-letters")
ERASE_PERSON = ("subject", "erase", "acct-1", "--user", "user-1", "--yes", "--no-dead-letters")


def test_killed_sweeps_and_erasures_then_one_erasure_leave_nothing_of_the_person(
    store: tuple[Path, dict[str, str], ParquetEncryption],
) -> None:
    root, env, encryption = store
    # Killed right after a synced copy, before its rename: a copy that holds the person
    # (a sweep keeps everyone's unexpired rows; erasing a colleague keeps the person's).
    _killed_at_sync(env, 3, *SWEEP)
    assert _person_rows_anywhere(root, encryption)[1], "a killed run leaves its copy"
    _killed_at_sync(env, 5, *ERASE_COLLEAGUE)
    assert _person_rows_anywhere(root, encryption)[1], "a killed run leaves its copy"

    # Killed at random points: how long a whole run takes sets the range of delays.
    started = time.monotonic()
    assert _sieve(env, *SWEEP, "--dry-run").returncode == 0
    whole_run_s = time.monotonic() - started
    chooser = random.Random(SEED)
    for number in range(RANDOM_KILLS):
        command = SWEEP if number % 2 else ERASE_COLLEAGUE
        _killed_after(env, chooser.uniform(0.2, whole_run_s), *command)

    done = _sieve(env, *ERASE_PERSON)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _person_rows_anywhere(root, encryption) == (0, [])

    export = _sieve(env, "subject", "export", "acct-1", "--user", "user-1")
    assert export.returncode == 0, export.stderr
    summary = json.loads(export.stdout.splitlines()[-1])
    assert summary["identifiable_rows_by_class"] == {}
    assert summary["leftover_copies"] == 0 and summary["in_flight_unreadable"] == []
    # Everyone else is still there (as far as the sweeps got): the kills lost no one else.
    colleague = _sieve(env, "subject", "export", "acct-2")
    assert json.loads(colleague.stdout.splitlines()[-1])["identifiable_rows_by_class"]


def test_an_erasure_blocked_by_a_workers_file_in_flight_exits_3_and_says_why(
    store: tuple[Path, dict[str, str], ParquetEncryption],
) -> None:
    root, env, _encryption = store
    final = next((root / "identifiable").rglob("*.parquet"))
    in_flight = final.with_name(final.name + ".tmp-0123abcd")
    in_flight.write_bytes(final.read_bytes()[:200])  # a worker mid-write: not readable yet
    done = _sieve(env, *ERASE_PERSON)
    assert done.returncode == 3, done.stderr
    assert "run the erasure again" in done.stderr
    assert in_flight.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-01", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01T06:30:00+02:00", datetime(2027, 1, 1, 4, 30, tzinfo=UTC)),
        ("2027-01-01T06:30:00Z", datetime(2027, 1, 1, 6, 30, tzinfo=UTC)),
    ],
)
def test_sweep_now_takes_a_date_or_an_instant(text: str, expected: datetime) -> None:
    from streams.subject.commands import parse_now

    assert parse_now(text) == expected


def test_sweep_now_without_an_offset_suggests_a_form_it_accepts() -> None:
    import click

    from streams.subject.commands import parse_now

    with pytest.raises(click.BadParameter) as refused:
        parse_now("2027-01-01T06:30")
    suggestion = refused.value.message.rsplit("write ", 1)[1]
    assert parse_now(suggestion) == datetime(2027, 1, 1, 6, 30, tzinfo=UTC)
    with pytest.raises(click.BadParameter, match="neither a date"):
        parse_now("next tuesday")
