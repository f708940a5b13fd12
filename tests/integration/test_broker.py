"""The session broker is a real Kafka 4 broker, configured the way Sieve expects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from streams.broker.control import broker_version
from streams.topics import ensure_topics
from tests.fixtures.kafka import KafkaBroker, TopicFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(kafka: KafkaBroker) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    yield client
    client.close()


def test_broker_answers_metadata_on_its_loopback_port(
    kafka: KafkaBroker, admin: KafkaAdminClient
) -> None:
    cluster = admin.describe_cluster()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", kafka.port)]
    assert cluster["controller_id"] == 1


def test_version_is_kafka_4_from_the_jars(kafka: KafkaBroker) -> None:
    assert kafka.version.split(".")[0] == "4"
    assert kafka.version == broker_version(kafka.broker.lib_dir)


def test_status_reports_running_and_start_is_idempotent(kafka: KafkaBroker) -> None:
    status = kafka.broker.status()
    assert status.running and status.answering
    assert status.version == kafka.version
    assert status.bootstrap_servers == kafka.bootstrap_servers
    again = kafka.broker.start(timeout_s=30)
    assert again.pid == status.pid  # reused, not a second broker


def test_topics_are_not_auto_created(kafka: KafkaBroker, admin: KafkaAdminClient) -> None:
    described = admin.describe_topics(["test.never-created"])
    assert described[0]["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert "test.never-created" not in admin.list_topics()


def test_ensure_topics_creates_with_configs_then_is_idempotent(
    kafka: KafkaBroker, admin: KafkaAdminClient, topic_factory: TopicFactory
) -> None:
    prefix = topic_factory()  # a unique name to derive this test's topic names from
    raw, dead = f"{prefix}.raw", f"{prefix}.dead"

    def ensure() -> dict[str, bool]:
        return ensure_topics(
            kafka.bootstrap_servers,
            raw_topic=raw,
            raw_partitions=4,
            raw_retention_hours=72,
            dead_letter_topic=dead,
            dead_letter_retention_hours=168,
        )

    assert ensure() == {raw: True, dead: True}
    assert ensure() == {raw: False, dead: False}  # idempotent: both exist now

    partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([raw, dead])}
    assert partitions == {raw: 4, dead: 4}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in (raw, dead)]
    configs = admin.describe_configs(resources)["topic"]
    assert configs[raw]["cleanup.policy"]["value"] == "delete"
    assert configs[raw]["retention.ms"]["value"] == str(72 * 3_600_000)
    assert configs[dead]["cleanup.policy"]["value"] == "compact,delete"
    assert configs[dead]["retention.ms"]["value"] == str(168 * 3_600_000)
    assert configs[raw]["segment.ms"]["value"] == configs[dead]["segment.ms"]["value"] == "3600000"
