"""Sieve's topics and their configs: the raw topic and the dead-letter topic.

``ensure_topics`` is idempotent: a topic that exists is left exactly as it is (its partition
count cannot shrink, and growing it would move accounts to other partitions and break
per-account order), so re-running it on a live cluster is always safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import click

from schemas.topic_datasets import DEAD_LETTERS
from streams.errors import ConfigurationError, TransientError
from streams.kafka_clients import admin_client
from streams.settings import Settings, reads_settings

HOUR_MS = 3_600_000
TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


@dataclass(frozen=True)
class TopicSpec:
    """A topic Sieve creates: name, partitions and topic-level configs (strings, as Kafka)."""

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)


def _retention_configs(retention_hours: int) -> dict[str, str]:
    retention_ms = retention_hours * HOUR_MS
    return {
        "retention.ms": str(retention_ms),
        # Retention deletes whole closed segments only, and a segment closes after
        # segment.ms (7 days by default): without this, personal data would outlive its
        # retention by up to a week. One hour at most keeps the overshoot small.
        "segment.ms": str(min(retention_ms, HOUR_MS)),
    }


def raw_topic_spec(name: str, partitions: int, retention_hours: int) -> TopicSpec:
    """The raw topic: events keyed by account id, deleted after ``retention_hours``.

    Records carry the broker's append time, not the producer's: dedup's horizon runs on
    arrival, and only the log's own clock makes a replay decide as the first run did.
    """
    configs = {
        "cleanup.policy": "delete",
        "message.timestamp.type": "LogAppendTime",
        **_retention_configs(retention_hours),
    }
    return TopicSpec(name, partitions, configs)


def dead_letter_topic_spec(name: str, partitions: int, retention_hours: int) -> TopicSpec:
    """The dead-letter topic, keyed by source coordinates ``<topic>+<partition>+<offset>``.

    Compacted *and* deleted: a re-sent dead letter (a replay after a crash) replaces the
    earlier copy under the same key, a tombstone erases one, and everything still goes
    after ``retention_hours`` (it may hold personal data).
    """
    configs = {"cleanup.policy": DEAD_LETTERS.cleanup_policy, **_retention_configs(retention_hours)}
    return TopicSpec(name, partitions, configs)


def sieve_topic_specs(
    *,
    raw_topic: str,
    raw_partitions: int,
    raw_retention_hours: int,
    dead_letter_topic: str,
    dead_letter_retention_hours: int,
) -> list[TopicSpec]:
    """The raw and dead-letter topics. The dead-letter topic gets as many partitions as the
    raw one, so a replay that rejects everything spreads over as many partitions."""
    return [
        raw_topic_spec(raw_topic, raw_partitions, raw_retention_hours),
        dead_letter_topic_spec(dead_letter_topic, raw_partitions, dead_letter_retention_hours),
    ]


def create_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0
) -> dict[str, bool]:
    """Create the topics of ``specs`` that do not exist; leave existing ones untouched.

    Returns ``{name: created}`` (False: it existed). Returns only once every created topic
    has a leader for each partition, so producing to it right away succeeds. Raises
    ``TransientError`` when the broker is unreachable and ``ConfigurationError`` when it
    rejects a spec (a bad config name or value).
    """
    from kafka.errors import KafkaError, for_code

    specs = list(specs)
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = admin_client(
            bootstrap_servers=bootstrap_servers,
            client_id="sieve-topics",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError as away:
        raise TransientError(f"no Kafka broker answered at {bootstrap_servers}: {away}") from away
    try:
        # replication_factor -1: the broker's default (1 on the local single-node broker).
        request = {
            spec.name: {"num_partitions": spec.partitions, "configs": dict(spec.configs)}
            for spec in specs
        }
        response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        created: dict[str, bool] = {}
        for topic in response["topics"]:
            code = topic["error_code"]
            if code not in (0, TOPIC_ALREADY_EXISTS):
                reason = topic.get("error_message") or for_code(code).__name__
                raise ConfigurationError(f"Kafka refused to create topic {topic['name']}: {reason}")
            created[topic["name"]] = code == 0
        new = [name for name, was_created in created.items() if was_created]
        if new:
            admin.wait_for_topics(new, timeout_ms=timeout_ms)
        return created
    except KafkaError as failed:
        raise TransientError(f"creating topics at {bootstrap_servers} failed: {failed}") from failed
    finally:
        admin.close()


def ensure_topics(
    bootstrap_servers: str,
    *,
    raw_topic: str,
    raw_partitions: int,
    raw_retention_hours: int,
    dead_letter_topic: str,
    dead_letter_retention_hours: int,
    timeout_s: float = 30.0,
) -> dict[str, bool]:
    """Create Sieve's raw and dead-letter topics if missing (idempotent).

    Returns ``{name: created}``; see :func:`create_topics` for the errors.
    """
    specs = sieve_topic_specs(
        raw_topic=raw_topic,
        raw_partitions=raw_partitions,
        raw_retention_hours=raw_retention_hours,
        dead_letter_topic=dead_letter_topic,
        dead_letter_retention_hours=dead_letter_retention_hours,
    )
    return create_topics(bootstrap_servers, specs, timeout_s=timeout_s)


def ensure_topics_from_settings(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, bool]:
    """:func:`ensure_topics` with the values of ``settings``."""
    return ensure_topics(
        settings.bootstrap_servers,
        raw_topic=settings.raw_topic,
        raw_partitions=settings.raw_partitions,
        raw_retention_hours=settings.raw_retention_hours,
        dead_letter_topic=settings.dead_letter_topic,
        dead_letter_retention_hours=settings.dead_letter_retention_hours,
        timeout_s=timeout_s,
    )


@reads_settings(
    "bootstrap_servers",
    "raw_topic",
    "raw_partitions",
    "raw_retention_hours",
    "dead_letter_topic",
    "dead_letter_retention_hours",
)
@click.command("topics")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for Kafka.")
def topics_command(timeout: float) -> None:
    """Create the raw and dead-letter topics (SIEVE_RAW_TOPIC, SIEVE_DEAD_LETTER_TOPIC) if
    missing; existing topics are left unchanged."""
    # Every field has a default; mypy sees that only with the pydantic plugin.
    settings = cast(Callable[[], Settings], Settings)()
    created = ensure_topics_from_settings(settings, timeout_s=timeout)
    for name, was_created in created.items():
        click.echo(f"{name}: {'created' if was_created else 'exists (left unchanged)'}")


@dataclass(frozen=True)
class DeadLetterTopic:
    """What a worker needs to know of its dead-letter topic before it starts."""

    created: bool  # it was missing and the worker created it
    max_message_bytes: int  # the topic's ``max.message.bytes``: larger dead letters are cut


def prepare_dead_letter_topic(
    bootstrap_servers: str,
    *,
    dead_letter_topic: str,
    raw_topic: str,
    raw_partitions: int,
    retention_hours: int,
    timeout_s: float = 30.0,
) -> DeadLetterTopic:
    """Create the dead-letter topic if it is missing, with its spec (as many partitions as
    the raw topic has, ``raw_partitions`` if that is missing too); return its size limit.

    A worker calls this before it starts: a dead letter sent to a missing topic would wait
    for metadata and fail long after the range counting it was cut. Raises
    ``TransientError`` when no broker answers and ``ConfigurationError`` when the broker
    refuses to create the topic or to describe it (the worker must not start then).
    """
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    try:
        admin = admin_client(
            bootstrap_servers=bootstrap_servers,
            client_id="sieve-worker-start",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError as away:
        raise TransientError(f"no Kafka broker answered at {bootstrap_servers}: {away}") from away
    try:
        described = {t["name"]: t for t in admin.describe_topics([raw_topic, dead_letter_topic])}
        raw = described.get(raw_topic)
        partitions = len(raw["partitions"]) if raw and raw["error_code"] == 0 else raw_partitions
        dead = described.get(dead_letter_topic)
        created = False
        if dead is None or dead["error_code"] != 0:
            spec = dead_letter_topic_spec(dead_letter_topic, partitions, retention_hours)
            created = create_topics(bootstrap_servers, [spec], timeout_s=timeout_s)[
                dead_letter_topic
            ]
        resource = ConfigResource(
            ConfigResourceType.TOPIC, dead_letter_topic, configs=["max.message.bytes"]
        )
        configs = admin.describe_configs([resource], config_filter="all")
        limit = configs["topic"][dead_letter_topic]["max.message.bytes"]["value"]
        return DeadLetterTopic(created=created, max_message_bytes=int(limit))
    except KafkaError as failed:
        if failed.retriable:
            raise TransientError(f"Kafka at {bootstrap_servers} is away: {failed}") from failed
        raise ConfigurationError(
            f"cannot prepare the dead-letter topic {dead_letter_topic}: {failed}"
        ) from failed
    except (KeyError, TypeError, ValueError) as odd:
        raise ConfigurationError(
            f"Kafka did not describe the dead-letter topic {dead_letter_topic}"
            f" (max.message.bytes): {odd!r}"
        ) from odd
    finally:
        admin.close()
