"""A kafka-python client whose start fails leaves no thread behind.

kafka-python 3 starts a client's IO thread before it bootstraps and never stops it when the
bootstrap fails: each failed start (a worker waiting for its broker, the broker's readiness
probe) left one more thread reconnecting and logging in the process. Nobody listens on the
port these tests use, so every start fails; no broker is needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from streams.broker.control import answers_metadata, free_ports
from streams.errors import TransientError
from streams.kafka_clients import admin_client, kafka_consumer
from streams.topics import TopicSpec, create_topics, prepare_dead_letter_topic


def _io_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("kafka-io-")}


def _nobody_listens() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


def _leaves_no_io_thread(start: Callable[[str], object]) -> None:
    before = _io_threads()
    start(_nobody_listens())
    assert _io_threads() - before == set()


@pytest.mark.parametrize("make", [admin_client, kafka_consumer])
def test_a_client_that_cannot_bootstrap_raises_and_stops_its_thread(
    make: Callable[..., object],
) -> None:
    def start(servers: str) -> None:
        with pytest.raises(Exception, match="bootstrap"):
            make(bootstrap_servers=servers, bootstrap_timeout_ms=300, request_timeout_ms=1300)

    _leaves_no_io_thread(start)


def test_the_workers_start_with_no_broker_leaves_no_thread_per_attempt() -> None:
    def start(servers: str) -> None:
        for _attempt in range(3):  # the worker retries while it waits for its broker
            with pytest.raises(TransientError):
                prepare_dead_letter_topic(
                    servers,
                    dead_letter_topic="dead",
                    raw_topic="raw",
                    raw_partitions=1,
                    retention_hours=1,
                    timeout_s=0.3,
                )

    _leaves_no_io_thread(start)


def test_the_brokers_readiness_probe_and_topic_creation_leave_no_thread() -> None:
    def start(servers: str) -> None:
        assert not answers_metadata(servers, timeout_s=0.3)
        with pytest.raises(TransientError):
            create_topics(servers, [TopicSpec("t", 1, {})], timeout_s=0.3)

    _leaves_no_io_thread(start)
