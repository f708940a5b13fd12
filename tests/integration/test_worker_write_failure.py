"""A worker that cannot recover a partition or write a range stops, and commits nothing.

Ranges are written in the background while the next batches are processed, and partitions
are recovered in aiokafka's rebalance listener (which logs and swallows exceptions). Either
failure must stop the worker process at once, with no marker written and no offset
committed, and a restarted worker (the fault gone) must then commit every record.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from streams.generate.commands import generate_to_topic
from streams.topics import TopicSpec, create_topics
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until

COUNT = 2_000


def _committed_offset(setup: WorkerSetup) -> int | None:
    consumer = KafkaConsumer(
        bootstrap_servers=setup.bootstrap_servers,
        group_id=setup.group,
        enable_auto_commit=False,
    )
    try:
        return consumer.committed(TopicPartition(setup.raw_topic, 0))
    finally:
        consumer.close()


@pytest.mark.parametrize(
    "blocked_folder",
    [
        # Recovery lists this folder: the partition cannot be recovered.
        "identifiable",
        # Recovery lists its parent fine; the first range's traffic records go here.
        "identifiable/retention_class=traffic",
    ],
)
def test_a_worker_that_cannot_recover_or_write_stops_and_commits_nothing(
    kafka: KafkaBroker, tmp_path: Path, blocked_folder: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw, dead = f"test.writefail.raw.{suffix}", f"test.writefail.dead.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw, 1, {}), TopicSpec(dead, 1, {})])
    generate_to_topic(traffic_config(COUNT, seed=11), kafka.bootstrap_servers, raw)
    setup = WorkerSetup(kafka.bootstrap_servers, raw, dead, tmp_path, f"g-{suffix}")
    # A file where a folder must go (root ignores permissions; a file in the way does not).
    blocker = setup.data_root / blocked_folder
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")

    worker = WorkerProcess(setup, "failing").start()
    try:
        wait_until(lambda: not worker.alive(), 120, "the worker to stop")
    finally:
        worker.kill()
    assert worker.process is not None and worker.process.returncode != 0
    assert "Not a directory" in worker.log_path.read_text(errors="replace")
    assert setup.totals().get("ranges", 0) == 0
    assert _committed_offset(setup) is None

    blocker.unlink()
    restarted = WorkerProcess(setup, "restarted").start()
    try:
        wait_until(
            lambda: setup.committed_raw() >= COUNT,
            120,
            "the restarted worker to commit every record",
            workers=[restarted],
        )
    finally:
        restarted.stop()
    assert setup.committed_raw() == COUNT
