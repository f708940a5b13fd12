"""Run real `sieve worker` processes against the session broker, and wait on their outputs.

Workers run as subprocesses so tests can SIGKILL them at any moment. Progress is read
from the commit markers (what is durably committed), never from logs or timing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.compute as pc

from schemas.commits import committed_files, read_markers, resolve_markers
from streams.broker.control import LocalBroker, free_ports
from streams.privacy.keyring import write_new_keyring
from streams.worker.commands import committed_totals
from streams.worker.sink import open_data_root
from tests.integration.pipeline_truth import read_identifiable


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    workers: Sequence[WorkerProcess] = (),
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds, or
    at once when every one of ``workers`` has exited (with the end of their logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if workers and not any(worker.alive() for worker in workers):
            logs = "\n".join(f"--- {w.name}:\n{w.log_tail()}" for w in workers)
            raise AssertionError(f"every worker exited while waiting for {what}\n{logs}")
        time.sleep(interval)
    logs = "\n".join(f"--- {w.name}:\n{w.log_tail()}" for w in workers)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


@dataclass
class WorkerSetup:
    """Everything one pipeline under test shares: topics, group, data root, keys."""

    bootstrap_servers: str
    raw_topic: str
    dead_letter_topic: str
    root: Path
    group: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_root = self.root / "data"
        self.keyring_file = self.root / "keyring.json"
        if not self.keyring_file.exists():
            write_new_keyring(self.keyring_file)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIEVE_")}
        env.update(
            SIEVE_BOOTSTRAP_SERVERS=self.bootstrap_servers,
            SIEVE_RAW_TOPIC=self.raw_topic,
            SIEVE_DEAD_LETTER_TOPIC=self.dead_letter_topic,
            SIEVE_CONSUMER_GROUP=self.group,
            SIEVE_DATA_ROOT=str(self.data_root),
            SIEVE_WORK_DIR=str(self.root / "work"),
            SIEVE_KEYRING_FILE=str(self.keyring_file),
            SIEVE_ROLL_INTERVAL_SECONDS="1.0",
            SIEVE_ROLL_MAX_RECORDS="20000",
            # A killed worker's partitions move after this long (the broker's minimum).
            SIEVE_SESSION_TIMEOUT_SECONDS="6",
            # The traffic of these tests has fixed dates (pipeline_truth.TRAFFIC_END): a
            # live window of 400 days would turn it into dead letters a year from now. The
            # window itself is tested with the defaults (test_worker_time_window.py).
            SIEVE_EVENT_MAX_BEHIND="P36500D",
        )
        env.update(self.extra_env)
        return env

    def totals(self) -> Mapping[str, int]:
        counts, dead, _identifiable, ranges = committed_totals(str(self.data_root), self.raw_topic)
        return {**counts, "dead_lettered": sum(dead.values()), "ranges": ranges}

    def committed_raw(self) -> int:
        return self.totals().get("raw", 0)

    def fact_rows(self) -> duckdb.DuckDBPyRelation:
        return duckdb.sql(f"SELECT * FROM read_parquet('{self.data_root}/facts/**/*.parquet')")


class WorkerProcess:
    """One `sieve worker` subprocess (its own process group, so kill reaches it whole)."""

    def __init__(self, setup: WorkerSetup, name: str, command: list[str] | None = None) -> None:
        self.setup = setup
        self.name = name
        self.command = command or [
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "--loglevel",
            "info",
        ]
        self.log_path = setup.root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = self.setup.env()
        env["SIEVE_METRICS_PORT"] = str(free_ports(1)[0])
        self.metrics_port = int(env["SIEVE_METRICS_PORT"])
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to flush, commit or clean up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the worker stalls (no heartbeat, no progress) until :meth:`resume`."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def leftover_temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def committed_offsets(setup: WorkerSetup) -> dict[int, int]:
    """Kafka's committed offset of each raw partition for the workers' group (none: absent)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=setup.bootstrap_servers, group_id=setup.group, enable_auto_commit=False
    )
    try:
        partitions = consumer.partitions_for_topic(setup.raw_topic) or set()
        offsets = {p: consumer.committed(TopicPartition(setup.raw_topic, p)) for p in partitions}
        return {p: offset for p, offset in offsets.items() if offset is not None}
    finally:
        consumer.close()


def keep_running_for(seconds: float, workers: Sequence[WorkerProcess]) -> None:
    """Let a fault last ``seconds`` (a broker away, a disk full: the duration *is* the test's
    input, not a wait for something to happen); fail if a worker exits meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.alive():
                raise AssertionError(f"{worker.name} exited during the fault:\n{worker.log_tail()}")
        time.sleep(0.2)


@contextlib.contextmanager
def own_broker(broker_dir: Path, *, start: bool = True) -> Iterator[LocalBroker]:
    """A broker of the test's own (on free ports, sharing the session's jar cache), for
    tests that kill, pause or stop it; stopped (or killed) at the end whatever happened."""
    from tests.conftest import JAR_CACHE

    port, controller_port = free_ports(2)
    broker = LocalBroker(broker_dir, port, controller_port, lib_dir=JAR_CACHE)
    try:
        if start:
            broker.start(120)
        yield broker
    finally:
        with contextlib.suppress(Exception):
            broker.resume()  # a paused broker cannot stop cleanly
        if broker.running_pid() is not None:
            try:
                broker.stop(timeout_s=20)
            except Exception:
                broker.kill()


def assert_exactly_once(setup: WorkerSetup, by_kind: Counter[str], count: int) -> None:
    """Every output holds each accepted event once; live ranges tile the input from offset 0;
    nothing is left over but what superseded markers list (an evicted writer's late range,
    removed by the partition's next recovery).

    Rows are read the way readers read them: the files live markers list.
    ``by_kind``: the generator's records by kind (event, duplicate, malformed).
    """
    totals = setup.totals()
    assert totals["raw"] == count
    assert totals["accepted"] == by_kind["event"]
    assert totals["duplicates"] == by_kind["duplicate"]
    assert totals["dead_lettered"] == by_kind["malformed"]

    filesystem, root = open_data_root(str(setup.data_root))
    fact_files = [f"{root}/{path}" for path in committed_files(filesystem, root, "facts")]
    facts = duckdb.read_parquet(fact_files)
    ((rows, distinct),) = facts.aggregate("count(*), count(DISTINCT event_key)").fetchall()
    assert rows == distinct == by_kind["event"]

    identifiable = read_identifiable(
        setup.data_root, setup.keyring_file, committed_files(filesystem, root, "identifiable")
    )
    pairs = pc.binary_join_element_wise(
        identifiable["event_id"], identifiable["retention_class"], "/"
    )
    assert len(pc.unique(pairs)) == identifiable.num_rows > 0

    assert leftover_temporary_files(setup.data_root) == []
    live, superseded = resolve_markers(read_markers(filesystem, root, setup.raw_topic))
    explained = {f"{root}/{path}" for marker in superseded for path in marker.files}
    listed = {f"{root}/{path}" for marker in live for path in marker.files}
    on_disk = {
        str(path)
        for folder in ("facts", "identifiable")
        for path in (setup.data_root / folder).rglob("*.parquet")
    }
    assert on_disk - listed <= explained, f"orphan files: {sorted(on_disk - listed - explained)}"
    ranges: dict[int, list[tuple[int, int]]] = {}
    for marker in live:
        ranges.setdefault(marker.partition, []).append((marker.first_offset, marker.last_offset))
    for partition_ranges in ranges.values():
        assert partition_ranges[0][0] == 0
        for (_, last), (first, _) in itertools.pairwise(partition_ranges):
            assert first == last + 1, f"ranges overlap or leave a gap: {partition_ranges}"
