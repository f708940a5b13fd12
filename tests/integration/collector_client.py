"""Helpers of the collector's integration tests: a collector app around a real producer,
requests over real HTTP (aiohttp on 127.0.0.1), and the topic read back.

Every request runs against a fresh application (``create_collector_app``) in its own event
loop (``asyncio.run``): no pytest async plugin, nothing shared between tests but the broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from schemas.events import Event
from schemas.validate import parse_event
from streams.collector import create_collector_app
from streams.producer import EventProducer
from tests.conftest import KafkaBroker, TopicFactory

ACCOUNT = "acct-collector-1"
OTHER_ACCOUNT = "acct-collector-2"
KEY = "k1-" + "a" * 29
OTHER_KEY = "k2-" + "b" * 29
WRITE_KEYS = {ACCOUNT: [KEY], OTHER_ACCOUNT: [OTHER_KEY]}
MAX_BODY = 16 * 1024
RESPONSE_TIMEOUT_S = 20.0  # a bound on a hang, never a wait: every exchange ends sooner

T = TypeVar("T")


def recently(**delta: float) -> str:
    """An RFC 3339 instant ``delta`` before now (``hours=1``): inside the arrival window."""
    moment = datetime.now(UTC) - timedelta(**delta)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def page_view(account: str = ACCOUNT, **fields: Any) -> dict[str, Any]:
    """A valid page view with a unique event id; ``fields`` override or add fields."""
    event = {
        "type": "page_view",
        "schema_version": 1,
        "event_id": f"ev-{uuid.uuid4().hex}",
        "occurred_at": recently(hours=1),
        "account_id": account,
        "user_id": "user-1",
        "path": "/pricing",
    }
    event.update(fields)
    return event


def as_event(obj: Mapping[str, Any]) -> Event:
    return parse_event(msgspec.json.encode(obj))


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass
class Collector:
    """A producer to one fresh topic, and collector apps built around it per request."""

    kafka: KafkaBroker
    topic: str
    producer: EventProducer

    def app(
        self, *, ack_timeout_s: float = 10.0, max_body_bytes: int = MAX_BODY, **options: Any
    ) -> web.Application:
        return create_collector_app(
            producer=self.producer,
            write_keys=WRITE_KEYS,
            max_body_bytes=max_body_bytes,
            ack_timeout_s=ack_timeout_s,
            **options,
        )

    def post(
        self,
        body: bytes | str,
        *,
        content_type: str = "application/json",
        key: str | None = KEY,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = {"Content-Type": content_type, **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = body.encode() if isinstance(body, str) else body
        return run_against(self.app(), lambda server: http_request(server, "POST", data, sent))

    def post_json(self, batch: object, **kwargs: Any) -> Reply:
        return self.post(msgspec.json.encode(batch), **kwargs)

    def records(self) -> list[ConsumerRecord]:
        return read_topic(self.kafka.bootstrap_servers, self.topic)

    def end_offsets(self) -> dict[int, int]:
        return topic_end_offsets(self.kafka.bootstrap_servers, self.topic)


@pytest.fixture
def collector(kafka: KafkaBroker, topic_factory: TopicFactory) -> Iterator[Collector]:
    """A fresh 3-partition topic and a producer to it (pytest fixture; import it)."""
    topic = topic_factory(partitions=3)
    producer = EventProducer(kafka.bootstrap_servers, topic, client_id="collector-test")
    try:
        yield Collector(kafka, topic, producer)
    finally:
        producer.close(timeout=5.0)


# --- HTTP and Kafka helpers ------------------------------------------------------------------


def run_against(app: web.Application, exchange: Callable[[TestServer], Awaitable[T]]) -> T:
    """Serve ``app`` on a free loopback port for the length of ``exchange``."""

    async def scenario() -> T:
        server = TestServer(app, host="127.0.0.1")
        async with server:
            return await asyncio.wait_for(exchange(server), RESPONSE_TIMEOUT_S)

    return asyncio.run(scenario())


async def http_request(
    server: TestServer, method: str, data: bytes | None, headers: Mapping[str, str]
) -> Reply:
    path = "/v1/events" if method == "POST" else "/healthz"
    async with (
        ClientSession() as session,
        session.request(method, server.make_url(path), data=data, headers=headers) as response,
    ):
        body = await response.json() if response.content_type == "application/json" else None
        return Reply(response.status, dict(response.headers), body)


async def raw_exchange(server: TestServer, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Write ``request`` as is on a TCP connection; the status line, headers and body read.

    For what an HTTP client library would not send: a body cut short, a length that lies.
    """
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        status = (await reader.readline()).decode().strip()
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()


def topic_end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def read_topic(bootstrap_servers: str, topic: str) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its end offsets now, by partition then offset."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end offsets"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def decoded(records: list[ConsumerRecord]) -> list[Event]:
    return [msgspec.json.decode(record.value, type=Event) for record in records]


def by_event_id(events: list[Event]) -> dict[str, Event]:
    return {event.event_id: event for event in events}
