"""Exactly once under SIGKILL: every accepted event appears once in each output.

Workers are real `sieve worker` subprocesses on the session broker, killed with SIGKILL
(no flush, no commit, no cleanup) at random moments, between a range's commit marker and
its offset commit on purpose, and one of two workers in a group mid-way.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.commits import iter_markers
from streams.generate.commands import generate_to_topic
from streams.storage import open_data_root
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import (
    WorkerProcess,
    WorkerSetup,
    assert_exactly_once,
    committed_offsets,
    drain_then_stop,
    drained,
    prepared,
    wait_until,
)

DRAIN_TIMEOUT_S = 300


def test_five_random_sigkills_lose_and_repeat_nothing(kafka: KafkaBroker, tmp_path: Path) -> None:
    chunk = 40_000
    setup, truth = prepared(kafka, tmp_path, chunk, partitions=3, seed=11)
    by_kind, produced = Counter(truth.by_kind), chunk
    # Small fetches and ranges: many commits per second, so kills land mid-write as often as
    # mid-fetch.
    setup.extra_env.update(SIEVE_BATCH_MAX_RECORDS="2000", SIEVE_ROLL_MAX_RECORDS="5000")
    moments = _kill_moments()
    kills = 0
    worker = WorkerProcess(setup, "worker-0").start()
    try:
        while kills < 5:
            _kill_after_progress(setup, worker, moments)
            kills += 1
            # However fast the machine, every restart must find work left: top the input up
            # while the worker is dead. A new seed gives new event ids (and their own
            # duplicates); later days keep time moving forward, as in a live stream (dedup
            # works within 24 h of event time behind the partition's watermark).
            if produced - setup.committed_raw() < chunk // 2:
                later = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=3 * (produced // chunk))
                more = generate_to_topic(
                    traffic_config(chunk, seed=11 + kills, end=later),
                    kafka.bootstrap_servers,
                    setup.raw_topic,
                )
                by_kind.update(more.truth.by_kind)
                produced += chunk
            worker = WorkerProcess(setup, f"worker-{kills}").start()
        wait_until(
            drained(setup, produced),
            DRAIN_TIMEOUT_S,
            f"{produced} records committed",
            workers=[worker],
        )
    finally:
        worker.stop()
    assert kills == 5
    assert_exactly_once(setup, by_kind, produced)


def _kill_moments() -> random.Random:
    """The random kill moments of a test, from a seed it prints (to replay a failing run)."""
    seed = random.randrange(1 << 30)
    print(f"kill moments drawn with seed {seed}")
    return random.Random(seed)


def _kill_after_progress(setup: WorkerSetup, worker: WorkerProcess, moments: random.Random) -> None:
    """SIGKILL ``worker`` at a random moment after it has made progress since its start, so
    every kill lands in the middle of real work (fetching, transforming, writing,
    committing); fail if it dies on its own before."""
    before = setup.committed_raw()
    wait_until(
        lambda: setup.committed_raw() > before,
        timeout=120,
        what="progress after a restart",
        workers=[worker],
    )
    _pause(moments.uniform(0.0, 0.5), worker)
    worker.kill()


def _pause(seconds: float, worker: WorkerProcess) -> None:
    """Let the worker run for ``seconds`` (the random kill moment); fail if it dies meanwhile."""
    assert worker.process is not None
    try:
        worker.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:  # still running after `seconds`: the normal case
        return
    raise AssertionError(f"worker exited on its own:\n{worker.log_tail()}")


@pytest.mark.parametrize("commits", [1, 2])
def test_kill_between_offset_commit_and_marker(
    kafka: KafkaBroker, tmp_path: Path, commits: int
) -> None:
    count = 30_000
    setup, truth = prepared(kafka, tmp_path, count, partitions=2, seed=12)
    crashing = WorkerProcess(
        setup,
        "crashing",
        command=[sys.executable, "-m", "tests.fixtures.crashing_worker", str(commits)],
    ).start()
    assert crashing.process is not None
    crashing.process.wait(timeout=120)
    assert crashing.process.returncode == -9, crashing.log_tail()
    # Kafka holds more than the markers: the last committed offsets have no marker.
    assert setup.totals().get("ranges", 0) == commits - 1
    assert sum(committed_offsets(setup).values()) > setup.committed_raw()
    worker = WorkerProcess(setup, "worker").start()
    drain_then_stop(setup, worker, count, DRAIN_TIMEOUT_S)
    assert_exactly_once(setup, Counter(truth.by_kind), count)


def test_two_workers_one_killed_midway(kafka: KafkaBroker, tmp_path: Path) -> None:
    count = 80_000
    setup, truth = prepared(kafka, tmp_path, count, partitions=4, seed=13)
    first = WorkerProcess(setup, "first").start()
    second = WorkerProcess(setup, "second").start()
    try:
        wait_until(
            lambda: setup.committed_raw() >= count // 4,
            timeout=120,
            what="a quarter of the input committed",
            workers=[first, second],
        )
        first.kill()
        wait_until(
            drained(setup, count), DRAIN_TIMEOUT_S, f"{count} records committed", workers=[second]
        )
    finally:
        first.stop()
        second.stop()
    assert_exactly_once(setup, Counter(truth.by_kind), count)
    opened = open_data_root(str(setup.data_root), create=True)
    filesystem, root = opened.fs, opened.path
    assert {m.partition for m in iter_markers(filesystem, root, setup.raw_topic)} == {0, 1, 2, 3}


def test_ranges_cut_by_bytes_through_sigkills_lose_and_repeat_nothing(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """The byte cap (SIEVE_ROLL_MAX_BYTES) far below a batch: every batch is its own range,
    cut by bytes, and the traffic's resends straddle range boundaries; kills land between."""
    chunk = 20_000
    setup, truth = prepared(kafka, tmp_path, chunk, partitions=2, seed=23)
    setup.extra_env.update(SIEVE_BATCH_MAX_RECORDS="1000", SIEVE_ROLL_MAX_BYTES="65536")
    moments = _kill_moments()
    worker = WorkerProcess(setup, "bytes-0").start()
    try:
        for kill in range(2):
            _kill_after_progress(setup, worker, moments)
            worker = WorkerProcess(setup, f"bytes-{kill + 1}").start()
        wait_until(
            drained(setup, chunk),
            DRAIN_TIMEOUT_S,
            f"{chunk} records committed",
            workers=[worker],
        )
    finally:
        worker.stop()
    opened = open_data_root(str(setup.data_root))
    ranges = sum(1 for _ in iter_markers(opened.fs, opened.path, setup.raw_topic))
    # Cut by bytes: at least a range per fetched batch, far more than the timer would make.
    assert ranges >= chunk // 1_000
    assert_exactly_once(setup, Counter(truth.by_kind), chunk)
