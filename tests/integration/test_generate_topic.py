"""``sieve generate`` into a real topic: what lands there is exactly the ground truth."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer, TopicPartition

from schemas.decode import decode_batch
from streams.generate import TrafficConfig, load_user_agents
from streams.generate.commands import generate_to_topic
from tests.fixtures.kafka import KafkaBroker, TopicFactory

pytestmark = pytest.mark.integration

COUNT = 100_000
PARTITIONS = 6
READ_TIMEOUT_S = 120.0
START = datetime(2025, 3, 1, tzinfo=UTC)


def _read_to_end(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    """Every record of ``topic`` up to its end offsets, partition by partition, in order."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=10_000,
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[tuple[int, bytes | None, bytes]] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "the topic was not read to its end in time"
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records.extend((tp.partition, r.key, r.value) for r in batch)
        assert sum(end.values()) == len(records)
        return records
    finally:
        consumer.close()


def test_topic_holds_exactly_the_ground_truth(
    kafka: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    config = TrafficConfig(
        count=COUNT,
        seed=1,
        start=START,
        end=START + timedelta(days=30),
        user_agents=load_user_agents(),
    )
    report = generate_to_topic(config, kafka.bootstrap_servers, topic)
    truth = report.truth
    print(f"generated and produced {truth.records:,} records at {report.records_per_s:,.0f}/s")

    records = _read_to_end(kafka.bootstrap_servers, topic)
    assert len(records) == truth.records == COUNT

    # Classify with the worker's own decoder, independently of the generator's labels:
    # the first copy of an event id is the event, any later copy a duplicate.
    decoded = decode_batch([value for _, _, value in records])
    events: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    seen: set[str] = set()
    partition_of: dict[bytes | None, int] = {}
    for (partition, key, _), event in zip(records, decoded.events, strict=True):
        # One account, one partition: what keeps an account's events in order.
        assert partition_of.setdefault(key, partition) == partition
        if event is None:
            continue
        assert key == event.account_id.encode()
        tag = type(event).__struct_config__.tag
        assert isinstance(tag, str)
        (duplicates if event.event_id in seen else events)[tag] += 1
        seen.add(event.event_id)
    malformed = Counter(rejection.code for rejection in decoded.rejections)

    def nonzero(counts: dict[str, int]) -> dict[str, int]:
        return {name: n for name, n in counts.items() if n}

    assert dict(events) == nonzero(truth.events_by_type)
    assert dict(duplicates) == nonzero(truth.duplicates_by_type)
    assert dict(malformed) == nonzero(truth.malformed_by_reason)
    assert {
        "event": sum(events.values()),
        "duplicate": sum(duplicates.values()),
        "malformed": sum(malformed.values()),
    } == truth.by_kind
    # Keys of malformed records are account ids too (the record they were made from).
    assert all(key is not None and key.startswith(b"acc_") for _, key, _ in records)
