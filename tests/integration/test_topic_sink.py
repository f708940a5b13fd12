"""The bulk topic sink of `sieve generate` and `sieve replay` against the real broker:
topics are never created by accident, records go out without waiting for a full batch."""

from __future__ import annotations

import time
import uuid

import pytest
from click.testing import CliRunner
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.errors import ConfigurationError
from streams.generate.commands import generate
from streams.generate.topic_sink import TopicSink
from tests.fixtures.kafka import KafkaBroker, TopicFactory

pytestmark = pytest.mark.integration

WAIT_S = 30.0
TRICKLE = 20


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def test_a_missing_topic_is_an_error_and_is_not_created(kafka: KafkaBroker) -> None:
    typo = f"sieve.raw-typo-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigurationError, match=rf"topic '{typo}' does not exist.*--create-topic"):
        TopicSink(kafka.bootstrap_servers, typo, "test")
    assert typo not in _topics(kafka.bootstrap_servers)

    done = CliRunner().invoke(
        generate,
        ["--count", "10", "--topic", typo],
        env={"SIEVE_BOOTSTRAP_SERVERS": kafka.bootstrap_servers},
    )
    assert isinstance(done.exception, ConfigurationError), done.output
    assert typo not in _topics(kafka.bootstrap_servers)


def test_create_topic_creates_it_with_the_raw_topics_partitions(kafka: KafkaBroker) -> None:
    topic = f"sieve.raw-new-{uuid.uuid4().hex[:6]}"
    done = CliRunner().invoke(
        generate,
        ["--count", "500", "--accounts", "3", "--topic", topic, "--create-topic"],
        env={"SIEVE_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SIEVE_RAW_PARTITIONS": "4"},
    )
    assert done.exit_code == 0, done.output
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None)
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1, 2, 3}
    finally:
        consumer.close()
    assert _count(kafka.bootstrap_servers, topic) == 500


def test_a_trickle_is_delivered_without_waiting_for_a_full_batch(
    kafka: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    sink = TopicSink(kafka.bootstrap_servers, topic, "test", linger_s=0.1)
    try:
        for n in range(TRICKLE):  # paced as `sieve generate --rate 20` would
            sink.send(b"acct-1", f"record {n}".encode())
            time.sleep(1 / 20)
        sink.send(None, b"keyless")
        # Everything sent at least a linger before the last record is on the topic already,
        # long before a 512 KiB batch could fill.
        deadline = time.monotonic() + WAIT_S
        while _count(kafka.bootstrap_servers, topic) < TRICKLE - 2:
            assert time.monotonic() < deadline, "records waited for a full batch"
            time.sleep(0.2)  # polling the broker for a condition, with a deadline
    finally:
        sink.close()
    assert sink.failures == 0
    assert _count(kafka.bootstrap_servers, topic) == TRICKLE + 1
