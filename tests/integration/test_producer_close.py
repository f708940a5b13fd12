"""Closing an EventProducer while its broker is away stops kafka-python's network thread.

kafka-python 3's ``close()`` flushes first and raises at its timeout while a record is
pending, without stopping its network thread or closing its sockets: an application that
closes a producer during an outage (or a healer that replaces one) would leak both.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.events import Login
from streams.errors import TransientError
from streams.producer import EventProducer
from streams.topics import TopicSpec, create_topics
from tests.fixtures.worker_harness import own_broker, wait_until

pytestmark = pytest.mark.integration


def _login(number: int) -> Login:
    return Login(
        schema_version=1,
        event_id=f"close-{number}-{uuid.uuid4().hex[:6]}",
        occurred_at=datetime.now(UTC),
        account_id="acct-close",
    )


def _network_threads(client_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"{client_id}-network-thread"]


def test_a_producer_closed_while_its_broker_is_paused_stops_its_network_thread(
    tmp_path: Path,
) -> None:
    with own_broker(tmp_path / "broker") as broker:
        topic = f"test.close.{uuid.uuid4().hex[:8]}"
        create_topics(broker.bootstrap_servers, [TopicSpec(topic, 1, {})])
        client_id = f"close-{uuid.uuid4().hex[:6]}"
        producer = EventProducer(
            broker.bootstrap_servers,
            topic,
            client_id,
            delivery_timeout_s=8.0,
            request_timeout_s=3.0,
        )
        producer.send(_login(0)).get(timeout=30)
        assert _network_threads(client_id), "the producer's network thread is running"

        broker.pause()
        pending = producer.send(_login(1))
        with pytest.raises(TransientError, match="still not delivered"):
            producer.close(timeout=1.0)

        # Still paused: the pending record expires within its delivery timeout, and the
        # close finishes then.
        wait_until(
            lambda: not _network_threads(client_id),
            60.0,
            "the network thread to stop after close() while the broker is paused",
        )
        assert pending.failed(), "the pending record failed rather than vanished"
