"""A worker on a bad day, with real `sieve worker` processes and a real broker.

Dead letters too large for their topic, a dead-letter topic nobody created, a broker that
is not up when the worker starts and goes away later, a full disk: each time every raw
record ends up accepted, deduplicated or dead-lettered exactly once, the dead letters the
markers count are on the topic, and the log says what happened in a line or two.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from schemas.commits import iter_markers
from streams.broker.control import free_ports
from streams.generate.commands import generate_to_topic
from streams.storage import open_data_root
from streams.topics import TopicSpec, create_topics
from streams.worker.deadletter import TRUNCATED_HEADER
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import (
    WorkerProcess,
    WorkerSetup,
    keep_running_for,
    own_broker,
    wait_until,
)

COUNT = 3_000


def _setup(kafka_servers: str, root: Path) -> WorkerSetup:
    suffix = uuid.uuid4().hex[:8]
    return WorkerSetup(
        kafka_servers, f"test.fault.raw.{suffix}", f"test.fault.dead.{suffix}", root, f"g-{suffix}"
    )


def _dead_letters(setup: WorkerSetup) -> dict[bytes, tuple[dict[str, bytes], bytes]]:
    """Every record of the dead-letter topic by key: (headers, value)."""
    consumer = KafkaConsumer(bootstrap_servers=setup.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(setup.dead_letter_topic) or set()
        tps = [TopicPartition(setup.dead_letter_topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        letters = {}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    letters[record.key] = (dict(record.headers), record.value)
        return letters
    finally:
        consumer.close()


def _drain(setup: WorkerSetup, count: int, worker: WorkerProcess, timeout: float = 180) -> None:
    wait_until(
        lambda: setup.committed_raw() >= count,
        timeout,
        f"{count} raw records committed",
        workers=[worker],
    )


def test_a_dead_letter_too_large_for_its_topic_is_cut_to_fit(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    setup = _setup(kafka.bootstrap_servers, tmp_path)
    limit = 20_000
    create_topics(
        kafka.bootstrap_servers,
        [
            TopicSpec(setup.raw_topic, 1, {}),
            TopicSpec(setup.dead_letter_topic, 1, {"max.message.bytes": str(limit)}),
        ],
    )
    report = generate_to_topic(
        traffic_config(COUNT, seed=31), kafka.bootstrap_servers, setup.raw_topic
    )
    # Not JSON, 60 kB each: rejected, and too large for the dead-letter topic as they are.
    oversized = [bytes([65 + n]) * 60_000 for n in range(3)]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    for value in oversized:
        producer.send(setup.raw_topic, value=value, headers=[("client-trace", b"trace-1")])
    producer.flush()
    producer.close()
    total = COUNT + len(oversized)

    worker = WorkerProcess(setup, "worker").start()
    try:
        _drain(setup, total, worker)
    finally:
        worker.stop()

    totals = setup.totals()
    truth = Counter(report.truth.by_kind)
    assert totals["raw"] == total
    assert totals["dead_lettered"] == truth["malformed"] + len(oversized)
    assert totals["accepted"] == truth["event"]
    letters = _dead_letters(setup)
    assert len(letters) == totals["dead_lettered"]
    cut = [(h, v) for h, v in letters.values() if TRUNCATED_HEADER in h]
    assert len(cut) == len(oversized)
    for headers, value in cut:
        assert headers[TRUNCATED_HEADER] == b"60000"
        assert headers["client-trace"] == b"trace-1"
        assert headers["sieve.error.code"] == b"invalid_json"
        assert 0 < len(value) < limit and value == value[:1] * len(value)


def test_a_missing_dead_letter_topic_is_created_when_the_worker_starts(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    setup = _setup(kafka.bootstrap_servers, tmp_path)
    create_topics(kafka.bootstrap_servers, [TopicSpec(setup.raw_topic, 3, {})])
    report = generate_to_topic(
        traffic_config(COUNT, seed=32, malformed_share=0.02),
        kafka.bootstrap_servers,
        setup.raw_topic,
    )

    worker = WorkerProcess(setup, "worker").start()
    try:
        _drain(setup, COUNT, worker)
    finally:
        worker.stop()

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        [described] = admin.describe_topics([setup.dead_letter_topic])
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, setup.dead_letter_topic)],
            config_filter="all",
        )["topic"][setup.dead_letter_topic]
    finally:
        admin.close()
    assert len(described["partitions"]) == 3  # as many as the raw topic
    assert configs["cleanup.policy"]["value"] == "compact,delete"
    malformed = report.truth.by_kind["malformed"]
    assert setup.totals()["dead_lettered"] == malformed > 0
    assert len(_dead_letters(setup)) == malformed
    assert "created the dead-letter topic" in worker.log_path.read_text()


def test_a_worker_waits_for_its_broker_and_logs_an_outage_in_two_lines(tmp_path: Path) -> None:
    with own_broker(tmp_path / "broker", start=False) as broker:
        setup = _setup(broker.bootstrap_servers, tmp_path)
        worker = WorkerProcess(setup, "worker").start()
        try:
            wait_until(
                lambda: "waiting for the broker" in worker.log_path.read_text(),
                60,
                "the worker to say it waits for the broker",
                workers=[worker],
            )
            broker.start(120)
            create_topics(broker.bootstrap_servers, [TopicSpec(setup.raw_topic, 2, {})])
            first = generate_to_topic(
                traffic_config(COUNT, seed=33), broker.bootstrap_servers, setup.raw_topic
            )
            _drain(setup, COUNT, worker)
            before = worker.log_path.read_text()

            broker.stop()
            wait_until(
                lambda: "Kafka broker unreachable" in worker.log_path.read_text(),
                60,
                "the worker to notice the broker is away",
                workers=[worker],
            )
            # Away long enough for every client to retry many times (it used to write
            # thousands of ERROR lines), then back, with more input.
            keep_running_for(20, [worker])
            broker.start(120)
            second = generate_to_topic(
                traffic_config(COUNT, seed=34, end=_later(6)),
                broker.bootstrap_servers,
                setup.raw_topic,
            )
            _drain(setup, 2 * COUNT, worker)
            wait_until(
                lambda: "Kafka broker answering again" in worker.log_path.read_text(),
                60,
                "the worker to say the broker is back",
                workers=[worker],
            )
        finally:
            worker.stop()
    log = worker.log_path.read_text()
    during = log[len(before) :]
    assert before.count("waiting for the broker") == 1
    assert before.count("the broker answered after") == 1
    assert during.count("Kafka broker unreachable") == 1
    assert during.count("Kafka broker answering again") == 1
    assert sum("ERROR" in line for line in during.splitlines()) < 20
    truth = Counter(first.truth.by_kind) + Counter(second.truth.by_kind)
    totals = setup.totals()
    assert totals["raw"] == 2 * COUNT
    assert totals["accepted"] == truth["event"]
    assert totals["dead_lettered"] == truth["malformed"]


def test_a_full_disk_is_waited_out_without_losing_the_partitions(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    setup = _setup(kafka.bootstrap_servers, tmp_path)
    create_topics(kafka.bootstrap_servers, [TopicSpec(setup.raw_topic, 2, {})])
    report = generate_to_topic(
        traffic_config(COUNT, seed=35), kafka.bootstrap_servers, setup.raw_topic
    )
    flag = tmp_path / "disk-full"
    flag.touch()
    worker = WorkerProcess(
        setup,
        "worker",
        command=[
            *WorkerProcess(setup, "unused").command[:2],
            "tests.fixtures.disk_full_worker",
            str(flag),
        ],
    ).start()
    try:
        wait_until(
            lambda: "disk full" in worker.log_path.read_text(),
            120,
            "the worker to find the disk full",
            workers=[worker],
        )
        # Full for longer than the session timeout (6 s): a worker that stopped polling
        # would lose its partitions to a rebalance.
        keep_running_for(10, [worker])
        assert worker.alive() and setup.totals().get("ranges", 0) == 0
        flag.unlink()
        _drain(setup, COUNT, worker)
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert log.count("disk full writing partition") == 1
    assert log.count("disk writable again") == 1
    opened = open_data_root(str(setup.data_root), create=True)
    filesystem, root = opened.fs, opened.path
    generations = {m.generation for m in iter_markers(filesystem, root, setup.raw_topic)}
    assert len(generations) == 1, f"the worker was evicted and rejoined: {generations}"
    totals = setup.totals()
    assert totals["raw"] == COUNT
    assert totals["accepted"] == report.truth.by_kind["event"]


def _later(days: int) -> datetime:
    return datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=days)


def test_a_worker_stopped_while_it_waits_for_its_broker_exits_cleanly(tmp_path: Path) -> None:
    # Nobody listens at this address: the worker waits for its broker, then is stopped. It
    # has consumed nothing, so the stop is clean (exit 0), not a death by SIGTERM.
    away = f"127.0.0.1:{free_ports(1)[0]}"
    setup = WorkerSetup(away, "raw.never", "dead.never", tmp_path, "g-never")
    worker = WorkerProcess(setup, "waiting").start()
    try:
        wait_until(
            lambda: "waiting for the broker" in worker.log_tail(),
            60,
            "the worker waiting for its broker",
            workers=[worker],
        )
    finally:
        worker.stop(timeout=30)
    assert worker.process is not None and worker.process.returncode == 0, worker.exit_report()
