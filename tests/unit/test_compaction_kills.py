"""``kill -9`` of ``sieve compact`` at random points over worker output: after every kill,
every reader's view is the uncompacted truth, and a complete run leaves no leftover.

Issue 10.3. The real ``sieve compact`` runs in a subprocess on a local data root written by
the worker's sink (tests.fixtures.compaction_data.py). A run is killed after its N-th durable
step (a file synced before its rename, a rename synced, or a file removed), N drawn at
random over the steps a whole run takes, or after a random delay; several kills land on the
same data root, one after the other, as they would in production (each run sweeps what the
last one left).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs
import pytest

from aggregations.manifest import Manifest, write_manifest
from aggregations.storage import resolve_root
from streams import storage
from streams.compaction import run
from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring, write_new_keyring
from tests.fixtures.compaction_data import views, write_history

T = TypeVar("T")
SEED = 10_3  # issue 10, item 3: the kill points are reproducible
ROUNDS = 5
KILLS_PER_ROUND = 3
RUN_TIMEOUT_S = 120.0

# Runs `sieve compact`, SIGKILLing itself after its KILL_AFTER_STEPS-th durable step (0:
# never; it then prints how many steps the run took).
_KILL_AFTER_STEP = """
import atexit, os, signal, sys
from streams import storage
from streams.compaction import run
from streams.cli import main

after = int(os.environ["KILL_AFTER_STEPS"])
steps = []

def counted(real):
    def step(*args):
        result = real(*args)
        steps.append(1)
        if after and len(steps) >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return step

storage.sync_file = counted(storage.sync_file)  # a file written, before its rename
storage.sync_folder = counted(storage.sync_folder)  # a rename, made durable
run._remove = counted(run._remove)
atexit.register(lambda: print(f"steps={len(steps)}", file=sys.stderr))
sys.argv = ["sieve", *sys.argv[1:]]
main()
"""


@pytest.fixture
def pristine(tmp_path: Path) -> tuple[Path, dict[str, str], ParquetEncryption]:
    keyring_file = tmp_path / "keys.json"
    write_new_keyring(keyring_file)
    encryption = ParquetEncryption(*Keyring.load(keyring_file).encryption_keys())
    root = tmp_path / "pristine"
    write_history(root, encryption, partitions=2, ranges=10)
    # Published far past the history: every day is closed for the analytics.
    write_manifest(resolve_root(str(root)), Manifest(watermark=datetime(2025, 1, 1, tzinfo=UTC)))
    env = {
        **os.environ,
        "SIEVE_KEYRING_FILE": str(keyring_file),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return root, env, encryption


def _compact(env: dict[str, str], root: Path, kill_after: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_STEP, "compact"],
        env={**env, "SIEVE_DATA_ROOT": str(root), "KILL_AFTER_STEPS": str(kill_after)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _killed_after_delay(env: dict[str, str], root: Path, delay: float) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", _KILL_AFTER_STEP, "compact"],
        env={**env, "SIEVE_DATA_ROOT": str(root), "KILL_AFTER_STEPS": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)  # a random kill point, not a wait for anything
    process.send_signal(signal.SIGKILL)
    return process.wait(timeout=RUN_TIMEOUT_S)


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and (".tmp-" in path.name or path.parts[-3] == "_compaction")
    )


def test_kill_9_at_random_points_loses_nothing_and_doubles_nothing(
    tmp_path: Path, pristine: tuple[Path, dict[str, str], ParquetEncryption]
) -> None:
    template, env, encryption = pristine
    truth = views(template, encryption)
    whole = _compact(env, shutil.copytree(template, tmp_path / "whole"), kill_after=0)
    assert whole.returncode == 0, whole.stderr
    steps = int(whole.stderr.rsplit("steps=", 1)[1].split()[0])
    assert steps > 40  # files written and removed: enough places to die in
    rng = random.Random(SEED)
    killed = 0
    for round_number in range(ROUNDS):
        root = shutil.copytree(template, tmp_path / f"round-{round_number}")
        remaining = steps  # about: what a killed run did is not done again
        for kill in range(KILLS_PER_ROUND):
            if kill == KILLS_PER_ROUND - 1 and round_number % 2:
                code = _killed_after_delay(env, root, rng.uniform(0.5, 3.0))
            else:
                # Within the first half of what is left: the kill lands in this run.
                after = rng.randint(1, max(remaining // 2, 1))
                remaining -= after
                code = _compact(env, root, after).returncode
            killed += code == -signal.SIGKILL
            seen = views(root, encryption)
            for key in truth:
                assert seen[key] == truth[key], (key, round_number, kill)
        done = _compact(env, root, kill_after=0)
        assert done.returncode == 0, done.stderr
        assert views(root, encryption) == truth
        assert _leftovers(root) == []
        # Compacted: each partition's history is one compaction marker and its newest range.
        assert len(list((root / "_commits").rglob("*.json"))) == 4
    assert killed >= ROUNDS * (KILLS_PER_ROUND - 1)  # the runs died mid-way, as intended


class _Died(BaseException):
    """The process dies here (raised in place of the step after the n-th)."""


def test_a_stop_after_every_single_step_leaves_the_old_view_or_the_new(tmp_path: Path) -> None:
    """Every durable step of one compaction, in turn, is the last: after each, the views are
    the uncompacted truth (in-process, so each step is reached exactly; the subprocess test
    above kills for real)."""
    keyring_file = tmp_path / "keys.json"
    write_new_keyring(keyring_file)
    encryption = ParquetEncryption(*Keyring.load(keyring_file).encryption_keys())
    template = tmp_path / "template"
    write_history(template, encryption, partitions=1, ranges=3)
    truth = views(template, encryption)
    real_sync, real_rename, real_remove = storage.sync_file, storage.sync_folder, run._remove

    def compact_dying_after(root: Path, steps: int | None) -> int:
        done = 0

        def counted(real: Callable[..., T]) -> Callable[..., T]:
            def step(*args: Any) -> T:
                nonlocal done
                result = real(*args)
                done += 1
                if steps is not None and done >= steps:
                    raise _Died
                return result

            return step

        storage.sync_file, storage.sync_folder = counted(real_sync), counted(real_rename)  # type: ignore[assignment]
        run._remove = counted(real_remove)  # type: ignore[assignment]
        try:
            run.compact(
                pafs.LocalFileSystem(),
                str(root),
                last_closed=date(2025, 1, 1),
                held=(),
                cursor={},
                encryption=encryption,
                sieve_version="test",
            )
        except _Died:
            pass
        finally:
            storage.sync_file, storage.sync_folder = real_sync, real_rename  # type: ignore[assignment]
            run._remove = real_remove  # type: ignore[assignment]
        return done

    total = compact_dying_after(shutil.copytree(template, tmp_path / "whole"), None)
    assert total > 20
    for steps in range(1, total + 1):
        root = shutil.copytree(template, tmp_path / f"after-{steps}")
        compact_dying_after(root, steps)
        seen = views(root, encryption)
        assert [key for key in truth if seen[key] != truth[key]] == [], steps
