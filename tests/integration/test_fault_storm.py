"""The fault storm: nothing lost, nothing doubled, whatever the schedule of a bad day.

Three `sieve worker` processes share seven partitions of a broker of the test's own while
input keeps arriving. A seeded schedule mixes worker SIGKILLs (each worker restarted after
more input arrived), one broker SIGKILL (restarted on its data) and one broker SIGSTOP
longer than the session timeout (then SIGCONT), each landing while the workers are
committing. Then everything drains, and the outputs must show: live markers tile every
partition from offset 0 with no overlap, fact rows == distinct event keys == the
generator's events, identifiable (event id, class) pairs unique, and raw = accepted +
duplicates + dead-lettered equal to the generator's truth.

``SIEVE_STORM_SEED`` picks another schedule (the default is fixed, so CI repeats one);
the seed in use is printed.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.commits import read_markers, resolve_markers
from streams.broker.control import LocalBroker
from streams.generate.commands import generate_to_topic
from streams.storage import open_data_root
from streams.topics import TopicSpec, create_topics
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import (
    WorkerProcess,
    WorkerSetup,
    assert_exactly_once,
    keep_running_for,
    own_broker,
    wait_until,
)

SEED = int(os.environ.get("SIEVE_STORM_SEED", "14"))
PARTITIONS = 7
WORKERS = 3
WORKER_KILLS = 4
CHUNK = 12_000
SESSION_TIMEOUT_S = 6  # the harness's SIEVE_SESSION_TIMEOUT_SECONDS
DRAIN_TIMEOUT_S = 240


class _Storm:
    """The workers, the broker and the input of one storm, with the truth of what was sent."""

    def __init__(self, broker: LocalBroker, setup: WorkerSetup, rng: random.Random) -> None:
        self.broker = broker
        self.setup = setup
        self.rng = rng
        self.by_kind: Counter[str] = Counter()
        self.produced = 0
        self.started = 0
        self.workers = [self._start() for _ in range(WORKERS)]

    def _start(self) -> WorkerProcess:
        self.started += 1
        return WorkerProcess(self.setup, f"worker-{self.started}").start()

    def produce(self) -> None:
        # Each chunk its own seed and three later days: new event ids (with their own
        # duplicates and malformed records), time moving forward as in a live stream.
        chunk = self.produced // CHUNK
        end = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=3 * chunk)
        config = traffic_config(CHUNK, seed=SEED * 100 + chunk, end=end)
        report = generate_to_topic(config, self.broker.bootstrap_servers, self.setup.raw_topic)
        self.by_kind.update(report.truth.by_kind)
        self.produced += CHUNK

    def under_way(self) -> None:
        """Input waiting and the workers committing it: the next fault lands mid-work."""
        self.produce()
        before = self.setup.committed_raw()
        wait_until(
            lambda: self.setup.committed_raw() > before,
            120,
            "the workers committing again",
            workers=self.workers,
        )
        keep_running_for(self.rng.uniform(0.0, 1.5), self.workers)

    def kill_worker(self) -> None:
        victim = self.rng.randrange(len(self.workers))
        print(f"SIGKILL {self.workers[victim].name}")
        self.workers[victim].kill()
        self.produce()  # input keeps arriving while it is dead
        self.workers[victim] = self._start()

    def kill_broker(self) -> None:
        print("SIGKILL the broker")
        self.broker.kill()
        keep_running_for(self.rng.uniform(2.0, 6.0), self.workers)
        self.broker.start(120)

    def pause_broker(self) -> None:
        seconds = 2 * SESSION_TIMEOUT_S + self.rng.uniform(0.0, 4.0)
        print(f"SIGSTOP the broker for {seconds:.1f} s")
        self.broker.pause()
        keep_running_for(seconds, self.workers)
        self.broker.resume()


def test_a_fault_storm_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"fault storm seed {SEED} (SIEVE_STORM_SEED)")
    schedule = ["kill_worker"] * WORKER_KILLS + ["kill_broker", "pause_broker"]
    rng.shuffle(schedule)
    print("schedule:", ", ".join(schedule))
    with own_broker(tmp_path / "broker") as broker:
        suffix = uuid.uuid4().hex[:8]
        raw, dead = f"test.storm.raw.{suffix}", f"test.storm.dead.{suffix}"
        create_topics(
            broker.bootstrap_servers,
            [TopicSpec(raw, PARTITIONS, {}), TopicSpec(dead, PARTITIONS, {})],
        )
        setup = WorkerSetup(broker.bootstrap_servers, raw, dead, tmp_path, f"g-{suffix}")
        # Small fetches and ranges: several commits a second, so faults land mid-write as
        # often as mid-fetch.
        setup.extra_env.update(SIEVE_BATCH_MAX_RECORDS="2000", SIEVE_ROLL_MAX_RECORDS="5000")
        storm = _Storm(broker, setup, rng)
        try:
            for fault in schedule:
                storm.under_way()
                getattr(storm, fault)()
            storm.produce()
            wait_until(
                lambda: setup.committed_raw() >= storm.produced,
                DRAIN_TIMEOUT_S,
                f"{storm.produced} records committed",
                workers=storm.workers,
            )
        finally:
            for worker in storm.workers:
                worker.stop()
    for worker in storm.workers:
        print(f"{worker.name}: {worker.stop_report}")
    unclean = [w for w in storm.workers if w.process is None or w.process.returncode != 0]
    assert not unclean, "\n\n".join(w.exit_report() for w in unclean)
    assert_exactly_once(setup, storm.by_kind, storm.produced)
    opened = open_data_root(str(setup.data_root), create=True)
    filesystem, root = opened.fs, opened.path
    live, superseded = resolve_markers(read_markers(filesystem, root, raw))
    assert {m.partition for m in live} == set(range(PARTITIONS))
    print(
        f"{storm.produced} records, {len(live)} live ranges, {len(superseded)} superseded,"
        f" generations {min(m.generation for m in live)}-{max(m.generation for m in live)}"
    )
