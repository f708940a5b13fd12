"""``sieve status`` against a real broker: the lag is what the group has not committed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.cli import cli
from tests.fixtures.kafka import KafkaBroker, TopicFactory

pytestmark = pytest.mark.integration

PER_PARTITION = (7, 4)
COMMITTED = 5  # of partition 0


def _produce(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for partition, count in enumerate(PER_PARTITION):
            for n in range(count):
                producer.send(topic, value=f"{partition}-{n}".encode(), partition=partition)
        producer.flush(timeout=60)
    finally:
        producer.close()


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    # Waits out the group coordinator's start on a fresh broker, as a worker would have.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close()


def test_status_reports_the_lag_per_partition(
    kafka: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=len(PER_PARTITION))
    group = f"test-status-{uuid.uuid4().hex[:8]}"
    _produce(kafka.bootstrap_servers, topic)
    _commit(kafka.bootstrap_servers, group, topic, COMMITTED)
    env = {
        "SIEVE_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "SIEVE_RAW_TOPIC": topic,
        "SIEVE_CONSUMER_GROUP": group,
        "SIEVE_DATA_ROOT": str(tmp_path / "data"),
    }
    as_json = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    # Partition 0 is committed up to COMMITTED; partition 1 not at all (from its start).
    expected = {"0": PER_PARTITION[0] - COMMITTED, "1": PER_PARTITION[1]}
    assert document["lag"] == {"records": sum(expected.values()), "by_partition": expected}
    assert document["lag_error"] is None
    assert document["topic"] == topic and document["ranges"] == 0

    as_table = CliRunner().invoke(cli, ["status"], env=env)
    assert as_table.exit_code == 0, as_table.output
    assert f"{sum(expected.values())} records" in as_table.stdout


def test_a_missing_topic_is_named(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic = f"test.status.missing.{uuid.uuid4().hex[:8]}"
    env = {
        "SIEVE_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "SIEVE_RAW_TOPIC": topic,
        "SIEVE_DATA_ROOT": str(tmp_path / "data"),
    }
    result = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["lag_error"] == (
        f"the topic {topic} does not exist at {kafka.bootstrap_servers}"
    )
